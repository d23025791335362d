"""Test-only: accept the generated dataset files (fake_torchvision.py) where torchvision checks the
MD5 of the real ones (CIFAR, SVHN, STL-10). Loaded by Python at start-up in every process that has
this folder on its PYTHONPATH (the dry run's notebook kernels); a file must still exist, and all
parsing stays torchvision's."""
import os


def _exists(fpath, md5=None):
    return os.path.isfile(fpath)


try:
    import torchvision.datasets.cifar as _cifar
    import torchvision.datasets.stl10 as _stl10
    import torchvision.datasets.svhn as _svhn
    for _m in (_cifar, _stl10, _svhn):
        _m.check_integrity = _exists
except ImportError:   # no torchvision in this interpreter: nothing to patch
    pass
