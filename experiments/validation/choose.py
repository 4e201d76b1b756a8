"""Re-validate defaults on validation data carved from the training split, never the test split.

For one image set, seed and normal class, the training split is carved
(:func:`anomem.protocols.validation.carve_validation`, 20 % of every class's
training images held out) and the one-vs-all task of the class runs on it:
the class's held-out training images are the validation normals, the other
classes' held-out training images the validation anomalies.  Rows (AUROC %):

* one-class (gamma 0), one fit with the defaults: ``default``; the same fit
  scored with one view (``score_views=single``: the first view's scales, which
  a single-view fit has too, since stage 1 does not depend on the views) and
  with ``image_alpha=last`` (Eq. 13's alphas of that reading); 1-NN on the
  fit's encoder (``knn``) and on raw pixels (``pixel``);
* one-class refits: ``pseudo_none`` (``pseudo_anomalies=none``),
  ``factor1`` (``consolidate_factor=1``);
* semi-supervised (``--gamma``, default 0.05; ``--gamma 0`` leaves these rows out), one fit
  with the defaults:
  ``ss_default``; the same fit with the one-class score weighed 1
  (``ss_oc_evidence_null``: ``oc_evidence=null`` changes nothing else), and
  its heads trained again (same start) with ``head_sampling=uniform``
  (``ss_uniform``), ``head_deviations=in_sample`` (``ss_in_sample``) and the
  defaults (``ss_retrained``, the reference of those two);
* with ``--set KEY=VALUE`` (repeatable): one more one-class refit with those
  overrides, row ``set`` (the overrides in ``set_keys``); ``--only-set`` keeps the rows ``default`` and
  ``set`` alone (no other refit, no 1-NN, no semi-supervised fit);
* with ``--variant NAME KEY=VALUE...`` (repeatable): one one-class refit per variant,
  row ``NAME`` (its overrides in ``variants``), beside the one ``default`` fit;
* with ``--head-variant NAME KEY=VALUE...`` (repeatable): the semi-supervised rows,
  plus the heads trained again from the same start with those keys and scored with
  them, row ``ss_NAME`` (reference ``ss_retrained``).  ``--only-set`` with variants
  keeps ``default``, the variants and, for head variants, the semi-supervised rows;
* with ``--members K``: :class:`anomem.AnoMemEnsemble` of K members, one-class (row
  ``members``) and semi-supervised (row ``ss_members``, beside ``ss_default``), fitted
  as the single fits are; with ``--only-set`` the rows ``default``, ``members``,
  ``ss_default`` and ``ss_members`` alone.

    python -m experiments.validation.choose --dataset digits --seed 0 >> experiments/validation/rows.jsonl
    python -m experiments.validation.choose --dataset cifar --seed 0 --classes 0 1 >> ...
    python -m experiments.validation.choose --dataset digits --only-set --set weight_average=0.5
    python -m experiments.validation.choose --dataset digits --only-set \
        --variant beta2 memory.beta=2.0 --head-variant raw stage2.head_inputs=raw
    python -m experiments.validation.choose --dataset digits --only-set --members 5

``digits``: scikit-learn's digits, the ``digits`` preset; ``cifar``: CIFAR-10
(``ANOMEM_DATA``), the ``cpu`` preset at the grid budget (3 stage-1 epochs,
1,000 training and 200 validation images per class, drawn from the carved
split); ``cifar200``: the same with 200 training images per class at the
``cpu`` preset's own budget, as a user with a small training set fits it; ``digits28``: the
digits resized to 28 px (bilinear), the ``cpu`` preset (a small set of larger images).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from anomem import AnoMem, AnoMemEnsemble
from anomem.baselines.knn import KNNDetector
from anomem.baselines.pixel_knn import PixelKNN
from anomem.config import get_config, parse_override
from anomem.data.convert import to_image_tensor, to_normal_flags
from anomem.presets import input_side
from anomem.protocols.one_vs_all import make_one_vs_all
from anomem.protocols.validation import carve_validation
from anomem.scales import alphas
from anomem.stages.common import RunOptions
from anomem.stages.stage2 import fit_heads

#: How every one-class fit here runs: on all the carved training images, no progress bars.
FIT = {"validation_fraction": 0.0, "progress": False}


def validation_source(dataset: str, seed: int) -> tuple[Any, str, dict[str, Any]]:
    """(the carved split, preset, overrides) of an image set at its probe budget."""
    if dataset in ("digits", "digits28"):
        from anomem.data.digits import load_digits_split
        carved = carve_validation(load_digits_split(seed=seed), 0.2, seed)
        if dataset == "digits":
            return carved, "digits", {}
        from anomem.cli.demo import resized
        return dataclasses.replace(carved, x_train=resized(carved.x_train, 28),
                                   x_test=resized(carved.x_test, 28)), "cpu", {}
    from anomem.protocols.runner import load_dataset, subsample
    _, split = load_dataset("cifar10_jpeg")
    small = dataset == "cifar200"
    carved = subsample(carve_validation(split, 0.2, seed), 200 if small else 1000, 200, 0)
    return carved, "cpu", {} if small else {"stage1_epochs": 3}


def fused(scale_scores: np.ndarray, alphas: tuple[float, ...]) -> np.ndarray:
    """Eq. 13 over the given scales with the given (unnormalised) alphas."""
    a = np.asarray(alphas, dtype=np.float64)
    return scale_scores[:, :len(a)] @ (a / a.sum())


def one_class_rows(task: Any, preset: str, budget: dict[str, Any], seed: int,
                   overrides: dict[str, Any] | None = None, only_set: bool = False,
                   variants: dict[str, dict[str, Any]] | None = None) -> dict[str, np.ndarray]:
    det = AnoMem(preset, seed=seed, **budget).fit(task.x_train, **FIT)
    rows = {"default": det.decision_function(task.x_test)} if only_set else default_rows(det, task, preset)
    if overrides:
        variants = {"set": overrides, **(variants or {})}
    for name, change in (variants or {}).items():
        rows[name] = AnoMem(preset, seed=seed, **{**budget, **change}).fit(
            task.x_train, **FIT).decision_function(task.x_test)
    return rows if only_set else {**rows, **refit_rows(task, preset, budget, seed)}


def default_rows(det: AnoMem, task: Any, preset: str) -> dict[str, np.ndarray]:
    """The default fit's rows: its score, the same fit read otherwise, and the 1-NN rows."""
    cfg = det.network.config
    per_scale = det.scale_scores(task.x_test)
    n_views = len(det.network.views)
    default = det.decision_function(task.x_test)
    # the fusion recomputed from the scale scores is the detector's own (one-class, uncalibrated)
    assert np.allclose(fused(per_scale, alphas(cfg) * n_views), default, rtol=1e-5, atol=1e-6)
    rows = {"default": default,
            "score_views_single": fused(per_scale, alphas(cfg)),
            "image_alpha_last": fused(per_scale,
                                      alphas(cfg.replace(image_alpha="last")) * n_views)}
    rows["knn"] = KNNDetector(preset, k=1, encoder=det).fit(task.x_train).decision_function(task.x_test)
    rows["pixel"] = PixelKNN(size=input_side(task.x_train), k=1).fit(task.x_train).decision_function(
        task.x_test)
    return rows


def refit_rows(task: Any, preset: str, budget: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """The one-class refits with one choice at another value."""
    rows = {}
    for name, change in (("pseudo_none", {"pseudo_anomalies": "none"}),
                         ("factor1", {"consolidate_factor": 1})):
        rows[name] = AnoMem(preset, seed=seed, **budget, **change).fit(
            task.x_train, **FIT).decision_function(task.x_test)
    return rows


def ensemble_row(task: Any, preset: str, budget: dict[str, Any], seed: int, members: int,
                 labelled: bool) -> np.ndarray:
    """The scores of an ensemble of ``members`` fits (semi-supervised when ``labelled``)."""
    det = AnoMemEnsemble(preset, members=members, seed=seed, **budget)
    det.fit(task.x_train, task.labels_train if labelled else None, **FIT)
    return det.decision_function(task.x_test)


def semi_rows(task: Any, preset: str, budget: dict[str, Any], seed: int,
              head_variants: dict[str, dict[str, Any]] | None = None,
              only_default: bool = False) -> dict[str, np.ndarray]:
    det = AnoMem(preset, seed=seed, **budget).fit(task.x_train, task.labels_train, **FIT)
    fitted = det.network
    rows = {"ss_default": det.decision_function(task.x_test)}
    if only_default:
        return rows
    fitted.oc_weight.fill_(1.0)
    rows["ss_oc_evidence_null"] = det.decision_function(task.x_test)
    x = to_image_tensor(task.x_train, fitted.config.backbone.image_size, "x_train")
    y = to_normal_flags(task.labels_train, len(x), "labels_train")
    retrains = {"ss_retrained": {}, "ss_uniform": {"head_sampling": "uniform"},
                "ss_in_sample": {"head_deviations": "in_sample"},
                **{f"ss_{name}": change for name, change in (head_variants or {}).items()}}
    for name, change in retrains.items():
        net = copy.deepcopy(fitted)
        net.config = net.config.replace(**change)
        torch.manual_seed(seed)   # every retrained variant starts its heads alike
        fit_heads(net, x, y, {}, RunOptions())
        det.network_ = net
        rows[name] = det.decision_function(task.x_test)
    det.network_ = fitted
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=("digits", "digits28", "cifar", "cifar200"), default="digits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gamma", type=float, default=0.05)
    p.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="one more one-class refit with this override (row 'set')")
    p.add_argument("--variant", action="append", nargs="+", default=[], metavar="NAME KEY=VALUE",
                   help="a one-class refit with these overrides (row NAME)")
    p.add_argument("--head-variant", action="append", nargs="+", default=[], metavar="NAME KEY=VALUE",
                   help="the semi-supervised fit's heads retrained with these keys (row ss_NAME)")
    p.add_argument("--members", type=int, default=0, metavar="K",
                   help="rows 'members' and 'ss_members': AnoMemEnsemble of K members")
    p.add_argument("--only-set", action="store_true",
                   help="only the rows 'default', 'set', the variants' and the ensemble's")
    args = p.parse_args(argv)
    overrides = dict(parse_override(o) for o in args.set)
    variants, head_variants = (
        {v[0]: dict(parse_override(o) for o in v[1:]) for v in given}
        for given in (args.variant, args.head_variant))
    if args.only_set and not (overrides or variants or head_variants or args.members):
        p.error("--only-set needs --set, --variant, --head-variant or --members")
    torch.set_num_threads(1)
    split, preset, budget = validation_source(args.dataset, args.seed)
    for change in (overrides, *variants.values(), *head_variants.values()):
        get_config(preset, {**budget, **change})   # a bad key fails before any fit
    for c in args.classes:
        t0 = time.time()
        task = make_one_vs_all(split, c, 0.0, args.seed)
        rows = one_class_rows(task, preset, budget, args.seed, overrides, args.only_set, variants)
        semi = make_one_vs_all(split, c, args.gamma, args.seed)
        labelled = args.gamma > 0
        if labelled and (head_variants or args.members or not args.only_set):
            rows.update(semi_rows(semi, preset, budget, args.seed, head_variants,
                                  only_default=args.only_set and not head_variants))
        if args.members:
            rows["members"] = ensemble_row(task, preset, budget, args.seed, args.members, False)
            if labelled:
                rows["ss_members"] = ensemble_row(semi, preset, budget, args.seed, args.members, True)
        print(json.dumps({"ds": args.dataset, "split": "validation", "seed": args.seed, "c": c,
                          **{k: round(100 * roc_auc_score(semi.labels_test, v), 2)
                             for k, v in rows.items()}, **({"set_keys": overrides} if overrides else {}),
                          **({"variants": {**variants, **head_variants}}
                             if variants or head_variants else {}),
                          "t": round(time.time() - t0)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
