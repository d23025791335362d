"""rtlkit: robust transfer learning study kit (CARTL, Shafahi et al., Vaishnavi et al., provable transfer).

Foundations: data, models, runtime, io, errors. Measuring: attacks, evaluate. The loop: training,
transfer. Orchestration: runs (the cache), profiles, plan, report, figures. One module per paper
method in ``rtlkit.train.methods``; one module per notebook (steps, plots, panel) in ``rtlkit.studies``;
``plots`` and ``widgets`` hold only what the studies share.
"""
from rtlkit.core.errors import ConfigError, DatasetNotFound

__all__ = ["ConfigError", "DatasetNotFound"]
__version__ = "0.1.0"
