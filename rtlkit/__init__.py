"""rtlkit: robust transfer learning study kit (CARTL, Shafahi et al., Vaishnavi et al., provable transfer).

Modules, one job each: data, models, attacks, evaluate, training, transfer, runs (cache),
profiles, experiments (notebook steps), plots, widgets, report (figures + manifests).
"""
from .errors import ConfigError, DatasetNotFound

__all__ = ["ConfigError", "DatasetNotFound"]
__version__ = "0.1.0"
