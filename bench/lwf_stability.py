"""Is LwF at notebook 03's quick setting stable? (issue 21, point 3)

Trains notebook 03's LwF cell (AT source of 01-03, lambda_d given, 24 epochs, lr 0.01) with several
fine-tuning seeds and prints, per seed: clean / robust (min of PGD-20 CE and CW, 500 test images), the
last epoch's feature distance ||z - z0|| and penalty / CE ratio. Uses the run cache like a notebook.

    python -m bench.lwf_stability --lam-d 0.1 --seeds 0 1 2 [--json bench/results/lwf.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from rtlkit.studies import profiles
from rtlkit.core.errors import cli
from rtlkit.core.runtime import Runtime, cpu_record, default_cpu_isa, pin_cpu_isa


def _main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.lwf_stability", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--lam-d", type=float, nargs="+", default=[0.1])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    isa = pin_cpu_isa(default_cpu_isa(args.profile))
    from rtlkit.runs.store import run_dir
    from rtlkit.studies.cartl import _transfer
    from rtlkit.studies.cartl import measure
    P, R = profiles.get(args.profile), Runtime()
    rows = []
    for lam in args.lam_d:
        for seed in args.seeds:
            t0 = time.time()
            m = measure(P, R, False, "LwF", "all", seed, lam_d=lam)
            run, _ = _transfer(P, "LwF", "all", seed, lam_d=lam)
            last = json.loads((run_dir(run, R) / "train.json").read_text())["history"][-1]
            rows.append(dict(lam_d=lam, seed=seed, clean_acc=m["clean_acc"], robust_acc=m["robust_acc"],
                             robust_ce=m["robust_ce"], robust_cw=m["robust_cw"], n_test=m["n_test"],
                             feature_distance=last.get("feature_distance"), penalty_ce_ratio=last.get("penalty_ce_ratio"),
                             seconds=time.time() - t0))
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bench": "lwf_stability", "profile": args.profile, "cpu_isa": isa, "cpu": cpu_record(),
                       "rows": rows}, f, indent=1)
    return 0


main = cli("bench.lwf_stability", _main)

if __name__ == "__main__":
    sys.exit(main())
