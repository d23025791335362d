"""Train one cached run (or several) on several GPUs or CPU processes, named as the cache names it:

    torchrun --nproc_per_node=8 -m rtlkit.run --profile paper source-1a2b3c4d5e6f
    torchrun --nproc_per_node=8 -m rtlkit.run --profile paper --only 03 --all   # every uncached training, in waves
    python -m rtlkit.run --profile smoke --list                                 # the names a profile's suite has

A name is a run folder of the cache (``rtlkit.plan`` and ``rtlkit.launch --status`` list them);
the config comes from the profile's own code, not from a JSON decoder, so the run trains exactly
the config (every float bit) that the notebooks ask for, under the same cache key. Data-parallel
details: ``rtlkit.distributed``. ``RTLKIT_SYNC_BN=1`` syncs BatchNorm statistics over the processes.
"""
from __future__ import annotations

import argparse
import sys

from . import distributed
from .errors import ConfigError, DatasetNotFound, check
from .profiles import get
from .runs import get_or_train, run_dir
from .runtime import Runtime


def trainings(profile_name: str, notebooks: list[str] | None = None) -> dict:
    """Every training the profile's suite (or the named notebooks) asks for, by run folder name, in waves."""
    from .launch import items
    work, _ = items(get(profile_name), notebooks, include_cached=True)
    return {run_dir(i.run).name: i.run for i in work if i.training}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="run folder names, e.g. source-1a2b3c4d5e6f")
    ap.add_argument("--profile", default="full")
    ap.add_argument("--only", nargs="*", default=None, help="notebook prefixes, e.g. 01 03")
    ap.add_argument("--all", action="store_true", help="every training of the suite (cached ones load)")
    ap.add_argument("--list", action="store_true", help="print the suite's run names and exit")
    ap.add_argument("--device", default=None)
    a = ap.parse_args(argv)
    try:
        known = trainings(a.profile, a.only)
        if a.list:
            for name, run in known.items():
                print(f"{name}  {run.kind} {run.data.label}")
            return 0
        names = list(known) if a.all else a.names
        check(names, "name at least one run (see --list), or --all")
        unknown = [n for n in names if n not in known]
        check(not unknown, f"not a run of profile {a.profile}'s suite: {', '.join(unknown)} (see --list)")
        runtime = Runtime(device=a.device)
        distributed.init(runtime.device)
        for name in names:
            get_or_train(known[name], runtime, progress=distributed.is_main())
            if distributed.is_main():
                print(f"[rtlkit.run] {name}: done ({distributed.world_size()} process(es))")
        distributed.barrier()
    except (ConfigError, DatasetNotFound) as e:
        print(f"rtlkit.run: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
