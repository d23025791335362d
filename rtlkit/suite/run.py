"""Train or evaluate cached runs on several GPUs or CPU processes, named as the cache names them:

    torchrun --nproc_per_node=8 -m rtlkit.suite.run --profile paper source-1a2b3c4d5e6f
    torchrun --nproc_per_node=8 -m rtlkit.suite.run --profile paper transfer-0a1b2c3d4e5f/eval-6a7b8c9d0e1f
    torchrun --nproc_per_node=8 -m rtlkit.suite.run --profile paper --only 03 --all   # every uncached item, in waves
    rtlkit run --profile smoke --list                                 # the names a profile's suite has

A training is named by its run folder; an evaluation, a certification or other cached per-image
work by its file in that folder, without the suffix (``rtlkit.suite.plan`` and ``rtlkit.suite.launch
--status`` list them too). The config comes from the profile's own code, not from a JSON decoder,
so the run trains exactly the config (every float bit) that the notebooks ask for, under the same
cache key. Trainings are data-parallel, evaluations and certifications sharded by batch with the
rows gathered (``rtlkit.core.distributed``). ``RTLKIT_SYNC_BN=1`` syncs BatchNorm statistics over the
processes.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rtlkit.core import distributed
from rtlkit.core.errors import check, check_notebooks, cli
from rtlkit.studies.profiles import PROFILES, get
from rtlkit.runs.store import check_environment
from rtlkit.runs.cache import get_or_train
from rtlkit.suite.launch import items
from rtlkit.suite import registry
from rtlkit.core.runtime import Runtime, configure_threads, default_cpu_isa, pin_cpu_isa


def name_of(item) -> str:
    """A training's run folder; an evaluation's ``<run folder>/<file stem>``."""
    path = Path(item.key)
    return path.parent.name if item.training else f"{path.parent.name}/{path.stem}"


def suite(profile_name: str, notebooks: list[str] | None = None) -> dict:
    """Every training and evaluation the profile's suite (or the named notebooks) asks for, by
    name, in waves (sources, fine-tunes and heads, evaluations)."""
    work, _ = items(get(profile_name), notebooks, include_cached=True)
    return {name_of(i): i for i in work}


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="run folder names (source-1a2b3c4d5e6f) or evaluation names "
                                             "(source-1a2b3c4d5e6f/eval-0a1b2c3d4e5f)")
    ap.add_argument("--profile", default="full")
    ap.add_argument("--only", nargs="*", default=None, help="notebook prefixes, e.g. 01 03")
    ap.add_argument("--all", action="store_true", help="every item of the suite (cached ones load)")
    ap.add_argument("--list", action="store_true", help="print the suite's names and exit")
    ap.add_argument("--device", default=None)
    a = ap.parse_args(argv)
    check_environment()   # RTLKIT_THREADS among them: its count changes the bits
    check(a.profile in PROFILES, f"unknown profile {a.profile!r}; one of {', '.join(PROFILES)}")
    check_notebooks(a.only, registry.with_steps())
    if a.device:
        Runtime(device=a.device)   # an unknown device: one error before anything
    pin_cpu_isa(default_cpu_isa(a.profile, a.device))   # the notebooks' cache keys
    configure_threads()   # RTLKIT_THREADS, as the notebooks' kernels honour it
    if a.device:
        os.environ["RTLKIT_DEVICE"] = a.device   # every item's Runtime, evaluations' included
    known = suite(a.profile, a.only)
    if a.list:
        for name, item in known.items():
            print(f"{name}  {item.what}")
        return 0
    names = list(known) if a.all else a.names
    check(names, "name at least one run or evaluation (see --list), or --all")
    unknown = [n for n in names if n not in known]
    check(not unknown, f"not in profile {a.profile}'s suite: {', '.join(unknown)} (see --list)")
    names.sort(key=lambda n: known[n].wave)   # a source before its fine-tunes before their evaluations
    runtime = Runtime(device=a.device)
    distributed.init(runtime.device)
    for n in names:   # every check before any work
        if not known[n].training:
            distributed.check_shards(known[n].n, f"test examples in {n}")
    for n in names:
        item = known[n]
        if item.training:
            get_or_train(item.run, runtime, progress=distributed.is_main())
        else:
            item.call()
        if distributed.is_main():
            print(f"[rtlkit.suite.run] {n}: done ({distributed.world_size()} process(es))", flush=True)
    distributed.finish()
    return 0


main = cli("rtlkit.suite.run", _main)

if __name__ == "__main__":
    # run the package's module, not this __main__ copy of it (whose classes are other classes than rtlkit's)
    from rtlkit.suite import run as _package_module
    sys.exit(_package_module.main())
