"""Runs and the cache. A run is a frozen config dataclass; its stable hash (with the numerics,
off the CPU's fp32 eager default) names a folder under ``RTLKIT_RUNS`` (default ``runs/``):

    config.json                     the run's config
    checkpoint-e0003-<sha16>.pt     the newest epoch checkpoint (resumable), named by its hash
    model.pt, train.json            the trained weights and the training history
    complete.json                   written last: every artefact above with its sha256
    eval-<hash>.json / .csv         an evaluation, with the model sha256 it measured and the
                                    sha256 of its per-example table

``get_or_train(run)`` returns the cached model or trains it; one robust source thus serves
every k, every BN case and every notebook. What the cache guarantees (docs/reliability.md):
a run counts as cached only once complete.json is written; every artefact is checked against
its hash on load, and a broken one is set aside as ``*.corrupt`` and rebuilt (from the last
checkpoint when there is one); a per-run lock (``runs/.locks``) makes a second process wait
for the first and then load its result; a kill at any moment resumes to the same bits."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from rtlkit.core import data as D, distributed
from rtlkit.measure.attacks import PGD, FoolboxPGD
from rtlkit.core.errors import check, check_int
from rtlkit.measure.evaluate import evaluate
from rtlkit.core.io import (atomic_torch_save, atomic_write_bytes, atomic_write_json, csv_bytes, fault_point,
                            read_json, set_aside, sha256_bytes, sweep_tmp)
from rtlkit.core.models.backbone import Backbone
from rtlkit.core.runtime import cpu_record, Runtime, seed_all
from rtlkit.train.methods.neft import settle
from rtlkit.train.loop import Checkpoints, train
from rtlkit.train.transfer import prepare_target

from rtlkit.runs.specs import (DataSpec, ExternalSource, HeadRun, NoisyDraws, SourceRun, TransferRun, check_tap,
                               shaped_for, stable_hash, tapped, test_images, to_jsonable)
from rtlkit.runs.store import EVAL_VERSION, MARKER, read_marker, run_dir, run_lock, verified_state
from rtlkit.measure.smoothing import certify, summary


@dataclass
class Recording:
    """What a suite asked the cache for, in order, while :func:`recording` was on."""
    trainings: list = dataclasses.field(default_factory=list)     # runs
    evaluations: list = dataclasses.field(default_factory=list)   # (run, attacks, test_n)


_RECORDING: list[Recording] = []


def planning() -> bool:
    """True inside :func:`recording`: a caller that would compute from a cached result returns early."""
    return bool(_RECORDING)


@contextlib.contextmanager
def recording():
    """Inside, ``get_or_train`` and ``get_or_evaluate`` run nothing and touch no file: they record
    each request and return placeholders (``get_or_train``: None; ``get_or_evaluate``: zero
    metrics of the right shape). ``rtlkit.suite.plan`` lists a suite's work this way, from every
    study module alike, and a scheduler can take the same list."""
    rec = Recording()
    _RECORDING.append(rec)
    try:
        yield rec
    finally:
        _RECORDING.remove(rec)


def _placeholder_metrics(attacks, n: int) -> dict:
    return {"clean_acc": 0.0, "robust_acc": 0.0, "attacks": [a.label for a in attacks], "n_test": n,
            **{f"robust_acc[{a.label}]": 0.0 for a in attacks}}


def _initial_model(run, runtime: Runtime, progress: bool) -> Backbone:
    """The model before training: every random draw comes from the run's own seed, so it does
    not depend on what ran before in this process (a source trained or loaded, other runs)."""
    if isinstance(run, (SourceRun, ExternalSource)):
        return run.build_model()
    src = get_or_train(run.source, runtime, progress)
    if isinstance(run, HeadRun):
        return _headed(src, run)
    return prepare_target(src.cpu(), run.data.train().info.num_classes, run.policy, run.seed, run.neft)


def _headed(source: Backbone, run: HeadRun) -> Backbone:
    """A copy of the source with ``head.fc`` replaced by the run's fresh head (seeded) and every
    other parameter frozen; eval mode (f's BN uses the source's statistics)."""
    import copy
    model = copy.deepcopy(source).cpu()
    if "projection" in model._modules:
        del model.projection
    model.head.fc = run.head.build(model.feature_dim, run.data.train().info.num_classes, run.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.head.fc.parameters():
        p.requires_grad_(True)
    return model.eval()


def get_or_train(run: SourceRun | TransferRun, runtime: Runtime | None = None, progress: bool = True) -> Backbone:
    """The trained model of ``run``: from the cache (verified), or trained now (resuming a checkpoint)."""
    if _RECORDING:
        _RECORDING[-1].trainings.append(run)
        return None
    runtime = runtime or Runtime()
    folder = run_dir(run, runtime)
    with run_lock(folder):
        model = _initial_model(run, runtime, progress)
        if distributed.is_main():
            marker = read_marker(folder)
            state = verified_state(folder, marker) if marker is not None else None
        if distributed.broadcast(state is not None if distributed.is_main() else None):   # rank 0 decides
            if not distributed.is_main():   # rank 0 verified these bytes
                state = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
            model.load_state_dict(state)
            return runtime.prepare(model).eval()
        return _train(run, folder, model, runtime, progress)


def _train(run, folder: Path, model: Backbone, runtime: Runtime, progress: bool) -> Backbone:
    main = distributed.is_main()   # under torchrun only rank 0 writes; the others train beside it
    if main:
        sweep_tmp(folder)   # we hold the lock: any temp file here is a dead writer's
    made = not folder.is_dir()
    distributed.barrier()
    folder.mkdir(parents=True, exist_ok=True)
    shas = {"config.json": atomic_write_json(folder / "config.json", to_jsonable(run))} if main else {}
    t0 = time.time()
    policy = run.policy if isinstance(run, TransferRun) else None
    desc = f"{run.kind} " + (Path(run.path).name if isinstance(run, ExternalSource) else run.data.label) + \
        (f" k={run.policy.k}" if policy else "")
    try:
        if isinstance(run, ExternalSource):   # nothing to train: the checkpoint's weights, cached sha-checked
            history = {"checkpoint": run.path, "format": run.format, "sha256": run.sha256}
        elif isinstance(run, HeadRun):   # cheap (features cached): no checkpoints, a killed one starts again
            z, y = get_or_features(run.source, run.data, "train", runtime, progress, run.head_sigma, run.seed,
                                   tap=run.tap)
            model = runtime.prepare(model)
            history = run.method.fit(model.head.fc, z, y, run.seed, progress, desc, runtime)   # moves them to fc
        else:
            history = train(model, run.train_data(), run.method, runtime, policy=policy,
                            checkpoint=folder / "checkpoint.pt", seed=run.seed, progress=progress, desc=desc)
    except BaseException:
        if main and made and not Checkpoints(folder / "checkpoint.pt").files():
            shutil.rmtree(folder, ignore_errors=True)   # nothing worth keeping: leave no half-made run
        raise
    if getattr(run, "neft", None) is not None:
        settle(model)
    model = model.eval()
    if main:
        shas["model.pt"] = atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()},
                                             folder / "model.pt")
        scale = {**distributed.record(), "sync_bn": distributed.sync_bn()} if distributed.world_size() > 1 else {}
        shas["train.json"] = atomic_write_json(folder / "train.json", {
            "history": history, "wall_seconds": time.time() - t0, "device": runtime.describe(),
            "numerics": runtime.numerics(), "threads": torch.get_num_threads(), "cpu": cpu_record(), "torch": torch.__version__, **scale})
        atomic_write_json(folder / MARKER, {"run": folder.name, "artefacts": shas})
        fault_point("marker-written")
    distributed.barrier()   # the run is complete on disk before any rank returns
    return model


EVAL_SPLITS = ("test", "train")


def eval_path(run: SourceRun | TransferRun, attacks, test_n: int | None = None, runtime: Runtime | None = None,
              split: str = "test") -> Path:
    """Where the metrics of evaluating ``run`` with ``attacks`` (on ``test_n`` images of its
    ``split``) are cached. The test split keeps the key it always had; the train split adds itself."""
    check(split in EVAL_SPLITS, f"split must be one of {', '.join(EVAL_SPLITS)}, not {split!r}")
    spec = dataclasses.replace(run.data, test_n=test_n) if test_n else run.data
    key = {"attacks": list(attacks), "test": spec, "v": EVAL_VERSION}
    if split != "test":
        key["split"] = split
    return run_dir(run, runtime) / f"eval-{stable_hash(key)}.json"


def _cached_result(path: Path, marker: dict, table_suffix: str, sep: str, mismatches) -> tuple[dict, pd.DataFrame] | None:
    """A cached result (``path``, a JSON) and its per-example table (same stem, ``table_suffix``),
    if the JSON measured the run's current model.pt and the table matches the sha256 recorded in
    the JSON (key "<suffix>_sha256"), has its n_test rows, and ``mismatches(json, table)`` names
    no summary it fails to reproduce; None otherwise (broken files set aside, with a warning)."""
    if not path.is_file():
        return None
    table = path.with_suffix(table_suffix)
    try:
        m = read_json(path)
        if not isinstance(m, dict):
            raise ValueError(f"it holds a JSON {type(m).__name__}, not a record")
        if m.get("model_sha256") != marker["artefacts"]["model.pt"]:
            return None   # measured another model (or before integrity records): compute again
        bad = _nonfinite({k: v for k, v in m.items() if k != "column_means"})   # those: checked against the table
        if bad:
            raise ValueError(f"it records a non-finite {', '.join(bad)}")
        if not table.is_file():
            raise ValueError(f"its per-example table {table.name} is missing")
        data = table.read_bytes()
        if sha256_bytes(data) != m[f"{table_suffix[1:]}_sha256"]:
            raise ValueError(f"{table.name} does not match the sha256 recorded in it")
        df = pd.read_csv(io.BytesIO(data), sep=sep)
        if len(df) != m["n_test"]:
            raise ValueError(f"{table.name} has {len(df)} rows, not n_test={m['n_test']}")
        bad = mismatches(m, df)
        if bad:
            raise ValueError(f"its {', '.join(bad)} do not match the per-example table")
        return m, df
    except (OSError, ValueError, KeyError, TypeError, AttributeError, pd.errors.ParserError) as e:
        why = str(e) if type(e) is ValueError else f"unreadable ({type(e).__name__}: {e})"
        set_aside(path, why)
        if table.exists():
            set_aside(table, f"belongs to the broken {path.name}")
        return None


def _nonfinite(obj, where: str = "") -> list[str]:
    """The keys (dotted) of every NaN or infinite number in a JSON record."""
    if isinstance(obj, dict):
        return [k for key, v in obj.items() for k in _nonfinite(v, f"{where}.{key}" if where else str(key))]
    if isinstance(obj, list):
        return [k for i, v in enumerate(obj) for k in _nonfinite(v, f"{where}[{i}]")]
    return [where] if isinstance(obj, float) and not math.isfinite(obj) else []


def _differs(cached, measured, tol: float) -> bool:
    """Whether a cached summary fails to reproduce what its per-example table gives: more than
    ``tol`` apart, or a non-finite number where the table gives a finite one (NaN compares False
    with everything, so ``abs(nan - v) > tol`` alone would serve a NaN as the accuracy). Both NaN
    (a column with no values, such as a blank train accuracy) is a match."""
    a, b = float(cached), float(measured)
    if math.isnan(a) and math.isnan(b):
        return False
    return not (math.isfinite(a) and math.isfinite(b)) or abs(a - b) > tol


def _eval_mismatches(m: dict, df: pd.DataFrame) -> list[str]:
    means = {"clean_acc": df["clean_correct"].mean(), "robust_acc": df["robust_correct"].mean(),
             **{f"robust_acc[{a}]": df[a].mean() for a in m["attacks"]}}
    return [k for k, v in means.items() if _differs(m[k], v, 1e-9)]


def _model_for(run, folder: Path, runtime: Runtime, progress: bool) -> tuple[Backbone, str]:
    """The run's model (cached or trained now) and the sha256 of its model.pt, with the folder's
    stale temp files swept (the caller holds the run's lock)."""
    model = get_or_train(run, runtime, progress)
    if distributed.is_main():   # the other ranks never sweep: a temp file may be rank 0's, mid-write
        sweep_tmp(folder)
    return model, read_marker(folder, repair=False)["artefacts"]["model.pt"]


def _main_looks(lookup):
    """What rank 0 finds in the cache (``lookup()``, under the run's lock that it alone holds),
    on every rank; ``lookup()`` itself with one process."""
    return distributed.broadcast(lookup() if distributed.is_main() else None)


def _cached_on_main(path: Path, table_suffix: str, sep: str, mismatches) -> tuple[dict, pd.DataFrame] | None:
    """:func:`_cached_result` of a run's complete folder as rank 0 finds it, on every rank (None
    while the run or the result is not cached)."""
    def lookup():
        marker = read_marker(path.parent)
        return _cached_result(path, marker, table_suffix, sep, mismatches) if marker is not None else None
    return _main_looks(lookup)


def check_untapped(run) -> None:
    check(getattr(run, "tap", None) is None, "a head on a feature tap is measured on its features (model(x) is "
          "not h(f(x)) there): use the penultimate feature (tap=None) to attack or certify the model")


def get_or_evaluate(run: SourceRun | TransferRun, attacks: list[PGD | FoolboxPGD], runtime: Runtime | None = None,
                    progress: bool = True, batch_size: int = 500, test_n: int | None = None,
                    split: str = "test") -> dict:
    """Clean and robust accuracy of ``run``'s model on its test set (or a class-balanced ``test_n``
    of it), cached with a per-example CSV. ``split="train"`` measures the images it was trained on
    instead (the same class-balanced subset rule), for a robust generalisation gap."""
    attacks = list(attacks)
    check(len(attacks) >= 1, "attacks: give at least one attack (with none, robust accuracy would be the clean accuracy)")
    check(split in EVAL_SPLITS, f"split must be one of {', '.join(EVAL_SPLITS)}, not {split!r}")
    check_untapped(run)
    if _RECORDING:   # (run, attacks, test_n[, path, redo, split]): rtlkit.suite.plan's add_evaluation arguments
        _RECORDING[-1].evaluations.append((run, attacks, test_n) + ((None, None, split) if split != "test" else ()))
        return _placeholder_metrics(attacks, test_n or 0)
    runtime = runtime or Runtime()
    path = eval_path(run, attacks, test_n, runtime, split)
    with run_lock(path.parent):
        cached = _cached_on_main(path, ".csv", ",", _eval_mismatches)
        if cached is not None:
            return cached[0]
        test = run.test_data() if split == "test" else run.train_data()
        if test_n:
            test = D.subset(test, test_n, run.data.seed)
        distributed.check_shards(len(test))   # before any training or attack
        model, model_sha = _model_for(run, path.parent, runtime, progress)
        seed_all(run.seed)
        t0 = time.time()
        res = evaluate(model, test, attacks, runtime, batch_size, progress)   # under torchrun: sharded, gathered
        out = None
        if distributed.is_main():
            out = {**res.summary(), "attacks": [a.label for a in attacks], "n_test": len(res.examples),
                   **({"split": split} if split != "test" else {}),
                   "eval_seconds": time.time() - t0, "device": runtime.describe(), "numerics": runtime.numerics(),
                   "threads": torch.get_num_threads(), "cpu": cpu_record(), "model_sha256": model_sha,
                   **distributed.record(),
                   "csv_sha256": atomic_write_bytes(path.with_suffix(".csv"), csv_bytes(res.examples))}
            atomic_write_json(path, out)
        return json.loads(json.dumps(distributed.broadcast(out)))   # exactly what a later cache hit returns


# --------------------------------------------------------------------------- certificates

IMAGES_PER_CALL = 50   # certify's default grouping: each group of images draws from a generator seeded alike


def cert_path(run: SourceRun | TransferRun, smoothing, test_n: int | None = None,
              runtime: Runtime | None = None, images_per_call: int = IMAGES_PER_CALL) -> Path:
    """Where the randomized-smoothing certificates of ``run`` (on ``test_n`` evenly spaced test
    images, certified ``images_per_call`` at a time) are cached: cert-<hash>.json and a per-example
    cert-<hash>.tsv. The grouping changes the noise each image gets (a generator per group), so
    it is part of the key; the default is left out of it, so existing certificates keep their files."""
    key = {"smoothing": smoothing, "test_n": test_n, "v": 1}
    if images_per_call != IMAGES_PER_CALL:
        key["images_per_call"] = images_per_call
    return run_dir(run, runtime) / f"cert-{stable_hash(key)}.json"


def _cert_mismatches(m: dict, df: pd.DataFrame) -> list[str]:
    s = summary(df.label.to_numpy(), df.predict.to_numpy(), df.radius.to_numpy(), 0.0)
    return [k for k in ("smoothed_acc", "acr", "abstain") if _differs(m[k], s[k], 1e-12)]


def get_or_certify(run: SourceRun | TransferRun, smoothing, eps: float, runtime: Runtime | None = None,
                   progress: bool = True, test_n: int | None = None,
                   images_per_call: int = IMAGES_PER_CALL) -> dict:
    """Cohen's CERTIFY on ``test_n`` evenly spaced test images of ``run`` (all when None), cached
    with a per-example TSV (index, label, predict (-1 abstain), count, p_lower, radius, correct,
    seconds). Returns the summary at radius ``eps`` (SA, RA-CT, ACR, abstention) with the
    per-example table under "table"; ``eps`` is read-time only, so one certificate serves every eps."""
    from tqdm.auto import tqdm

    check_untapped(run)
    if _RECORDING:
        _RECORDING[-1].evaluations.append((run, [smoothing], test_n))
        return {"smoothed_acc": 0.0, "certified_acc": 0.0, "acr": 0.0, "abstain": 0.0, "n_test": test_n or 0,
                "table": pd.DataFrame()}
    runtime = runtime or Runtime()
    check_int("images_per_call", images_per_call, 1)
    path = cert_path(run, smoothing, test_n, runtime, images_per_call)
    with run_lock(path.parent):
        cached = _cached_on_main(path, ".tsv", "\t", _cert_mismatches)
        df = cached[1] if cached is not None else None
        if df is None:
            test = D.evenly_spaced(run.test_data(), test_n)
            distributed.check_shards(len(test))   # before any training or noise
            model, model_sha = _model_for(run, path.parent, runtime, progress)
            classes = test.info.num_classes
            done, t_start = {}, time.time()   # each group of images draws from a generator of its own
            for i, start in enumerate(tqdm(range(0, len(test), images_per_call), desc="certify", leave=False,
                                           disable=not progress)):
                if not distributed.owns(i):   # under torchrun: another rank's group
                    continue
                sl = slice(start, start + images_per_call)
                x = runtime.inputs(test.x[sl].float().div(255).to(runtime.device))
                t0 = time.time()
                c = certify(model, x, smoothing, classes, runtime.autocast)
                done[i] = pd.DataFrame({"index": test.index[sl].numpy(), "label": test.y[sl].numpy(), **c,
                                        "seconds": (time.time() - t0) / len(x)})
            df = pd.concat(distributed.gathered(done), ignore_index=True)
            df["correct"] = (df.predict == df.label) & (df.predict >= 0)
            df = df[["index", "label", "predict", "count", "p_lower", "radius", "correct", "seconds"]]
            s = summary(df.label.to_numpy(), df.predict.to_numpy(), df.radius.to_numpy(), 0.0)
            tsv = df.to_csv(sep="\t", index=False, float_format="%.17g").encode()
            if distributed.is_main():
                atomic_write_json(path, {
                    **{k: s[k] for k in ("smoothed_acc", "acr", "abstain")}, "n_test": len(df),
                    "smoothing": to_jsonable(smoothing), "images_per_call": images_per_call,
                    "certify_seconds": time.time() - t_start,
                    "device": runtime.describe(), "numerics": runtime.numerics(), "threads": torch.get_num_threads(), "cpu": cpu_record(),
                    "model_sha256": model_sha,
                    **distributed.record(),
                    "tsv_sha256": atomic_write_bytes(path.with_suffix(".tsv"), tsv)})
            distributed.barrier()
            df = pd.read_csv(io.BytesIO(tsv), sep="\t")   # exactly what a later cache hit reads
    return {**summary(df.label.to_numpy(), df.predict.to_numpy(), df.radius.to_numpy(), eps),
            "n_test": len(df), "eps": eps, "table": df}


# --------------------------------------------------------------------------- frozen features

def features_path(source: SourceRun, data: DataSpec, split: str, sigma: float | None = None, seed: int = 0,
                  runtime: Runtime | None = None, tap: int | None = None) -> Path:
    key = {"data": data, "split": split, "sigma": sigma, "seed": seed if sigma else None, "v": 1}
    if tap is not None:   # added only when set: the penultimate features keep their files
        key["tap"] = tap
    return run_dir(source, runtime) / f"features-{stable_hash(key)}.pt"


def _cached_tensors(source: SourceRun, path: Path, runtime: Runtime, progress: bool, compute, about: dict):
    """Tensors computed from ``source``'s model, cached in ``path`` with a JSON beside it recording
    their sha256 and the model.pt they came from: served only when both match (a broken file is
    set aside and computed again). ``compute(model)`` returns a dict of CPU tensors."""
    meta = path.with_suffix(".json")

    def lookup():
        marker = read_marker(path.parent)
        if marker is not None and meta.is_file() and path.is_file():
            try:
                m = read_json(meta)
                if not isinstance(m, dict):   # a list, a string or null: no record of anything
                    raise ValueError(f"{meta.name} holds a JSON {type(m).__name__}, not a record")
                blob = path.read_bytes()
                if m.get("model_sha256") == marker["artefacts"]["model.pt"] and sha256_bytes(blob) == m["sha256"]:
                    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
                if m.get("model_sha256") == marker["artefacts"]["model.pt"]:
                    raise ValueError(f"{path.name} does not match the sha256 recorded in {meta.name}")
            except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as e:
                set_aside(path, str(e) if type(e) is ValueError else f"unreadable ({type(e).__name__})")
                set_aside(meta, f"belongs to the broken {path.name}")
        return None
    with run_lock(path.parent):
        out = lookup() if distributed.is_main() else None
        if _main_looks(lambda: out is not None):   # under torchrun the other ranks read what rank 0 verified
            return out if out is not None else torch.load(path, map_location="cpu", weights_only=True)
        model, model_sha = _model_for(source, path.parent, runtime, progress)
        t0 = time.time()
        with torch.no_grad():   # under torchrun every rank computes the same tensors; rank 0 writes them
            out = compute(model.eval())
        if distributed.is_main():
            blob = io.BytesIO()
            torch.save(out, blob)
            sha = atomic_write_bytes(path, blob.getvalue())
            atomic_write_json(meta, {"sha256": sha, "model_sha256": model_sha, **to_jsonable(about),
                                     "shapes": {k: list(v.shape) for k, v in out.items()}, "seconds": time.time() - t0,
                                     "device": runtime.describe(), "numerics": runtime.numerics(),
                                     "threads": torch.get_num_threads(), "cpu": cpu_record()})
        distributed.barrier()
        return out


def get_or_features(source: SourceRun, data: DataSpec, split: str = "train", runtime: Runtime | None = None,
                    progress: bool = True, sigma: float | None = None, seed: int = 0,
                    batch_size: int = 1000, tap: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The source's frozen features f(x) (``tapped``: eval mode, float32, on the CPU) and labels of
    ``data``'s ``split`` (adapted to the source's input shape), cached once per source in
    ``features-<hash>.pt``; with ``sigma``, of one noisy copy x + sigma N(0, I) of each image (a
    generator seeded by ``seed``)."""
    check(split in ("train", "test"), f"split must be 'train' or 'test', not {split!r}")
    check_tap(tap, source.model.n_blocks)
    if _RECORDING:
        _RECORDING[-1].trainings.append(source)
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    runtime = runtime or Runtime()

    def compute(model):
        d = shaped_for(source, data.train() if split == "train" else data.test())
        g = torch.Generator(device=runtime.device).manual_seed(seed)
        zs = []
        for s in range(0, len(d), batch_size):
            x = d.x[s:s + batch_size].float().div(255).to(runtime.device)
            if sigma:
                x = x + sigma * torch.randn(x.shape, generator=g, device=x.device)
            with runtime.autocast():
                zs.append(tapped(model, runtime.inputs(x), tap).float().cpu())
        return {"z": torch.cat(zs), "y": d.y.clone()}
    about = {"data": data, "split": split, "sigma": sigma, "seed": seed, "tap": tap}
    out = _cached_tensors(source, features_path(source, data, split, sigma, seed, runtime, tap), runtime, progress,
                          compute, about)
    return out["z"], out["y"]


def noisy_features_path(source: SourceRun, data: DataSpec, draws: NoisyDraws, runtime: Runtime | None = None,
                        tap: int | None = None) -> Path:
    key = {"data": data, "draws": draws, "v": 1, **({"tap": tap} if tap is not None else {})}
    return run_dir(source, runtime) / f"noisy-{stable_hash(key)}.pt"


def get_or_noisy_features(source: SourceRun, data: DataSpec, draws: NoisyDraws, runtime: Runtime | None = None,
                          progress: bool = True, tap: int | None = None,
                          batch_size: int = 2000) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy features (draws, B, D), clean features (B, D), labels (B,)) of ``draws.images``
    class-balanced test images of ``data``, cached beside the source in ``noisy-<hash>.pt``."""
    check_tap(tap, source.model.n_blocks)
    if _RECORDING:
        n = len(test_images(data, draws.images, data.seed))
        redo = functools.partial(get_or_noisy_features, source, data, draws, None, False, tap)   # for rtlkit.suite.launch
        _RECORDING[-1].evaluations.append((source, [draws], n, noisy_features_path(source, data, draws, None, tap), redo))
        return torch.zeros(0, 0, 0), torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    runtime = runtime or Runtime()

    def compute(model):
        d = shaped_for(source, test_images(data, draws.images, data.seed))
        x = runtime.inputs(d.x.float().div(255).to(runtime.device))
        g = torch.Generator(device=runtime.device).manual_seed(draws.seed)
        with runtime.autocast():
            clean = tapped(model, x, tap).float().cpu()
        owner = torch.arange(len(x), device=x.device).repeat(draws.draws)   # draw-major: (draws, B)
        zs = []
        for s in tqdm_range(0, len(owner), batch_size, "noisy features", progress):
            xb = x[owner[s:s + batch_size]]
            with runtime.autocast():
                zs.append(tapped(model, xb + draws.sigma * torch.randn(xb.shape, generator=g, device=xb.device,
                                                                     dtype=xb.dtype), tap).float().cpu())
        return {"z": torch.cat(zs).view(draws.draws, len(x), -1), "clean": clean, "y": d.y.clone()}
    out = _cached_tensors(source, noisy_features_path(source, data, draws, runtime, tap), runtime, progress, compute,
                          {"data": data, "draws": draws, "tap": tap})
    return out["z"], out["clean"], out["y"]


def tqdm_range(start: int, stop: int, step: int, desc: str, progress: bool):
    from tqdm.auto import tqdm
    return tqdm(range(start, stop, step), desc=desc, leave=False, disable=not progress)


# --------------------------------------------------------------------------- other per-example tables

def table_path(run, name: str, key, runtime: Runtime | None = None) -> Path:
    return run_dir(run, runtime) / f"{name}-{stable_hash({'key': key, 'v': 1})}.json"


def _table_mismatches(m: dict, df: pd.DataFrame) -> list[str]:
    return [c for c, v in m.get("column_means", {}).items() if _differs(v, df[c].mean(), 1e-9)]


def get_or_table(run, name: str, key, compute, runtime: Runtime | None = None, progress: bool = True,
                 work=None, n: int = 0) -> pd.DataFrame:
    """A per-example table that ``compute(model)`` (a DataFrame) measures on ``run``'s model,
    cached as ``<name>-<hash of key>.json`` + ``.csv`` beside the run with the model.pt sha256 it
    measured and every numeric column's mean (checked on load, like evaluations). ``work`` (with
    ``label``, ``attack_steps``, ``forward_passes`` per image) and ``n`` are what rtlkit.suite.plan counts."""
    if _RECORDING:
        redo = functools.partial(get_or_table, run, name, key, compute, None, False, work, n)   # for rtlkit.suite.launch
        _RECORDING[-1].evaluations.append((run, [work], n, table_path(run, name, key), redo))
        return pd.DataFrame()
    runtime = runtime or Runtime()
    path = table_path(run, name, key, runtime)
    with run_lock(path.parent):
        cached = _cached_on_main(path, ".csv", ",", _table_mismatches)
        if cached is not None:
            return cached[1]
        model, model_sha = _model_for(run, path.parent, runtime, progress)
        t0 = time.time()
        df = compute(model)   # under torchrun every rank computes the same table; rank 0 writes it
        data = df.to_csv(index=False, float_format="%.17g").encode()
        df = pd.read_csv(io.BytesIO(data))   # exactly what a later cache hit reads
        means = {c: float(df[c].mean()) for c in df.columns if pd.api.types.is_numeric_dtype(df[c])}
        if distributed.is_main():
            atomic_write_json(path, {"key": to_jsonable(key), "n_test": len(df), "column_means": means,
                                     "seconds": time.time() - t0, "device": runtime.describe(),
                                     "numerics": runtime.numerics(), "threads": torch.get_num_threads(), "cpu": cpu_record(),
                                     "model_sha256": model_sha,
                                     "csv_sha256": atomic_write_bytes(path.with_suffix(".csv"), data)})
        distributed.barrier()
        return df
