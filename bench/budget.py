"""CARTL at a fair fine-tuning budget: does NEFT beat plain fine-tuning once it has the steps?

    python -m bench.budget                       # quick profile, budgets 6/24/60, seeds 0-2, 1,000 test images
    python -m bench.budget --seeds 0 --test-n 200 --budgets 6 24   # a faster look

Vanilla, AT + NEFT and CARTL at k = the profile's last CARTL k, on the profile's pair and its
split pair, each fine-tuned for every budget in epochs-equivalent optimizer steps. The steps are
``rtlkit.studies.cartl.budget_sweep``; this runner saves figures/03_budget.{png,csv,json}, the
JSON manifest holding the per-budget verdicts (a gap counts only where it exceeds its seed
spread). It is not part of the notebook suite: at quick it takes ~40 min on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import sys

from rtlkit.suite import session as report
from rtlkit.core.errors import ConfigError
from rtlkit.studies import cartl as S


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--budgets", type=int, nargs="+", default=[6, 24, 60])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--test-n", type=int, default=1000)
    ap.add_argument("--figures-dir", default=None)
    ap.add_argument("--device", default=None)
    a = ap.parse_args(argv)
    try:
        session = report.start("03_budget", a.profile, a.figures_dir, a.device, progress=True)
        P, R = session.profile, session.runtime
        df = S.budget_sweep(P, R, True, tuple(a.budgets), tuple(a.seeds), a.test_n)
    except ConfigError as e:
        print(f"rtlkit: {e}", file=sys.stderr)
        return 2
    verdicts = S.budget_verdicts(df)
    setting = (f"{P.model.name}, eps={P.eps:.3g}, k={P.cartl_ks[-1]}, lambda={P.cartl_choice[0]:g}, "
               f"beta={P.cartl_choice[1]:g}, {len(a.seeds)} seeds, {a.test_n} test images ({P.name})")
    fig = S.plot_budget(df, "CARTL at a fair budget: " + setting)
    session.save(fig, "03_budget", df.assign(source="rtlkit", setting=setting),
                 extra={"budgets": a.budgets, "seeds": a.seeds, "test_n": a.test_n,
                        "verdicts": verdicts.to_dict("records")})
    print(verdicts.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
