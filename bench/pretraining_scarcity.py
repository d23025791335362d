"""Vaishnavi et al. under data scarcity: do pre-training's robustness gains track its accuracy
gains once the targets are small enough for pre-training to matter?

    python -m bench.pretraining_scarcity                  # quick profile: notebook 04's targets + 8 scarce ones
    python -m bench.pretraining_scarcity --attack-images 500

At `quick`, notebook 04's four targets sit at the ceiling (SA 94-99 % after robust fine-tuning
from random init), so its relative changes are within the noise of 200 attacked images and its
R^2 means nothing (docs/committed-run.md, "Notebook 04"). This runner adds targets of 50 to 1,000 training
images (Fashion-MNIST 5-9 by count, MNIST-5k and the 8x8 digits by fraction), with everything
else notebook 04's: the same cached sources, AT and CR fine-tuning for the same steps, APGD,
Square and certificates at the same settings. Every AT fine-tune is attacked on its own training
images too (``train_ra_wb``, the same APGD-CE): the robust train-test gap that tells whether random
init over-fits a scarce target (04's findings compare it with pre-training's, issue 21 point 10).
It saves figures/04_scarcity.{png,csv,json}, the manifest holding every fit (slope, R^2, n). Not
part of the notebook suite.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import pandas as pd

from rtlkit.suite import session as report
from rtlkit.core.errors import ConfigError
from rtlkit.runs.specs import DataSpec
from rtlkit.studies import pretraining as S

F59 = (5, 6, 7, 8, 9)
SCARCE = (DataSpec("fashion-mnist", classes=F59, train_n=50), DataSpec("fashion-mnist", classes=F59, train_n=100),
          DataSpec("fashion-mnist", classes=F59, train_n=250), DataSpec("fashion-mnist", classes=F59, train_n=1000),
          DataSpec("mnist-5k", fraction=0.02), DataSpec("mnist-5k", fraction=0.05),
          DataSpec("digits-8x8", fraction=0.05), DataSpec("digits-8x8", fraction=0.2))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--attack-images", type=int, default=None, help="default: the profile's")
    ap.add_argument("--figures-dir", default=None)
    ap.add_argument("--device", default=None)
    a = ap.parse_args(argv)
    try:
        session = report.start("04_scarcity", a.profile, a.figures_dir, a.device, progress=True,
                               attack_images=a.attack_images)
        P, R = session.profile, session.runtime
        pt = P.pretraining
        P = replace(P, pretraining=replace(pt, pt_targets=pt.pt_targets + SCARCE))
        emp = S.empirical_transfer(P, R, True)
        gap = S.robust_train_gap(P, R, True)   # the same models' RA-WB on their own training images
        cert = S.certified_transfer(P, R, True)
    except ConfigError as e:
        print(f"rtlkit: {e}", file=sys.stderr)
        return 2
    sizes = {S.target_label(t): len(t.train()) for t in P.pretraining.pt_targets}
    changes = pd.concat([S.relative_change(emp), S.relative_change(cert)], ignore_index=True)
    changes["train_images"] = changes.target.map(sizes)
    fits = pd.concat([S.regressions(changes[changes.finetune == "AT"], "d_ra_wb"),
                      S.regressions(changes[changes.finetune == "AT"], "d_ra_bb"),
                      S.regressions(changes[changes.finetune == "CR"], "d_ra_ct"),
                      S.regressions(changes[changes.finetune == "CR"], "d_acr")], ignore_index=True)
    setting = S.setting(P)
    gap["train_images"] = gap.target.map(sizes)
    fig = S.plot_scarcity(changes, "Pre-training gains against data scarcity: " + setting, gap)
    keys = ["target", "pretraining", "finetune", "seed"]
    emp = emp.merge(gap[keys + ["train_sa", "train_ra_wb", "train_n", "gap_ra_wb"]], on=keys, how="left")
    table = pd.concat([emp, cert], ignore_index=True)
    table["train_images"] = table.target.map(sizes)
    session.save(fig, "04_scarcity", table.assign(source="rtlkit", setting=setting),
                 extra={**S.record(P), "targets": list(sizes), "train_images": sizes,
                        "fits": fits.to_dict("records"),
                        "changes": changes.drop(columns=[c for c in changes if c.endswith("_base")]).to_dict("records")})
    print(fits.to_string(index=False))
    print(gap[["target", "pretraining", "train_n", "train_ra_wb", "ra_wb", "gap_ra_wb"]].to_string(index=False))
    for f in S.findings(lambda name: table.assign(source="rtlkit") if name == "04_scarcity" else None):
        lo, hi = f.interval()
        print(f"{f.claim}: {100 * f.effect:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] points -> {f.verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
