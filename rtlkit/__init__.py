"""rtlkit: robust transfer learning study kit (CARTL, Shafahi et al., Vaishnavi et al., provable transfer).

Layers, each importing only from those before it: ``core`` (errors, io, runtime, distributed, data,
models) · ``measure`` (attacks, evaluate, smoothing, the card, the verdict rule) · ``train`` (the
loop, transfer policies, one module per paper method) · ``runs`` (specs, store, cache) ·
``studies`` (one module per notebook, profiles) · ``suite`` (registry, plan, figures, launch,
findings) · ``cli`` (the ``rtlkit`` command). docs/layout.md has the whole map.
"""
from rtlkit.core.errors import ConfigError, DatasetNotFound

__all__ = ["ConfigError", "DatasetNotFound"]
__version__ = "0.1.0"
