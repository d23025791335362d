"""Every bad setting of a CARTL method is a clear ConfigError."""
import pytest

from rtlkit import ConfigError
from rtlkit.train.methods.fdm import FDMTraining
from rtlkit.train.methods.lwf import LwFTraining
from rtlkit.train.methods.neft import NEFT
from rtlkit.runs.specs import DataSpec, SourceRun

from conftest import TINY


@pytest.mark.parametrize("bad", [
    lambda: NEFT(beta=0), lambda: NEFT(beta=1.2), lambda: FDMTraining(lam=-0.1),
    lambda: LwFTraining(lam_d=-1), lambda: FDMTraining(k=0),
    lambda: SourceRun(DataSpec("synthetic-a"), TINY, FDMTraining(k=5)),     # TINY has 5 blocks: no frozen part
    lambda: SourceRun(DataSpec("synthetic-a"), TINY, FDMTraining(k=9)),
])
def test_bad_cartl_settings_are_clear_errors(bad):
    with pytest.raises(ConfigError):
        bad()
