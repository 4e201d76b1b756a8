"""Stage 2: anomaly scoring from memory deviations (Eq. 8-13).

One-class: nothing to train (Eq. 9); with ``scoring.calibrate`` the per-scale scores of
the training normals give each scale's mean and standard deviation.
Semi-supervised: the encoder and memories are frozen, phi(Delta(s)) is computed
once per training image, and the per-scale MLP heads are trained on it with the
double hinge (Eq. 11-12), SGD with Nesterov momentum and cosine annealing.
phi(Delta(s)) is standardised per feature with the training set's mean and
std during training, then the standardisation is folded into the first layer
(the paper is silent; measured on digits, gamma = 0.05, same stage 1: AUROC
standardised vs raw, class 3 0.91 vs 0.45, class 5 0.91 vs 0.63, class 0 0.99
vs 0.99).
Batches draw the normal and the anomalous images with equal total probability
(``stage2.head_sampling="balanced"``; the paper draws every image alike, ``uniform``).
With ``scoring.semi_score="heads+oc"`` the fit also sets the weight of the one-class
score beside the heads (:func:`one_class_weight`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from anomem.errors import InvalidInputError
from anomem.losses import sup_loss
from anomem.stages.common import (
    RunOptions,
    check_finite,
    check_finite_parameters,
    load_checkpoint,
    map_batches,
    save_checkpoint,
    sgd_cosine,
    stream_seed,
)
from anomem.stages.consolidate import consolidate_on_maps, consolidation_stream, feature_maps
from anomem.torch_model import AnoMemModel

KMEANS_MAX_VECTORS = 20_000
# Images per batch when out-of-fold calibration scores precomputed features.
SCORE_BATCH = 256


@torch.no_grad()
def fit_kmeans_prototypes(model: AnoMemModel, normals: torch.Tensor, opts: RunOptions) -> None:
    """Fill every memory with k-means centroids of training-normal vectors (Table 4 ablation).

    For each memory, up to ``KMEANS_MAX_VECTORS`` spatial feature vectors of the
    normal training images at the scales it serves are clustered into as many
    centroids as it holds patterns (repeated when there are fewer vectors, so
    the memory keeps its shape); the memory retrieves the nearest of them
    (``scoring="kmeans"``, :meth:`anomem.memory.HopfieldMemory.centroid`).
    """
    from sklearn.cluster import KMeans  # here, not at import: ~90 MB of SciPy that most fits never use

    cfg = model.config
    maps = map_batches(model, normals, opts, lambda m, x: [z.permute(0, 2, 3, 1).flatten(0, 2).cpu()
                                                           for z in m.view_features(x)])
    g = torch.Generator().manual_seed(cfg.runtime.seed)
    for k, memory in enumerate(model.memories):
        size = len(memory.patterns)
        vecs = torch.cat([b[s.index] for s in model.scales if s.memory == k for b in maps])
        if cfg.memory.normalize:
            vecs = torch.nn.functional.normalize(vecs, dim=-1)
        vecs = vecs[torch.randperm(len(vecs), generator=g)[:KMEANS_MAX_VECTORS]]
        km = KMeans(n_clusters=min(size, len(vecs)), n_init=1, random_state=cfg.runtime.seed)
        km.fit(vecs.double().numpy())
        c = torch.as_tensor(km.cluster_centers_, dtype=torch.float32)
        # fewer vectors than patterns: repeated centroids keep the memory's shape (same retrieval)
        memory.patterns.copy_(c[torch.arange(size) % len(c)])


def calibrate_scales(model: AnoMemModel, normals: torch.Tensor, opts: RunOptions) -> None:
    """Store each scale's mean and std of one-class scores (Eq. 9) on the training normals.

    Consolidation makes the memories prototypes of these very images (a memory
    with as many patterns as images holds each of them), so their own scores
    are biased towards 0: measured on digits, the std of the pooled stage-3
    scale was 0 and that scale outweighed every other scale and the heads
    (semi-supervised digit 1: 95.6 in-sample, 97.8 out-of-fold).  With
    consolidation the scores are out-of-fold: each half of the normals (seed
    stream ``"calibrate"``) is scored against a copy of the memories
    consolidated on the other half; the model's own memories are untouched.
    Without consolidation, in-sample.  ``scoring.calibration="fused"`` gives every scale
    the mean and std of the alpha-fused score (Eq. 13) instead of its own.
    """
    if model.config.consolidates and len(normals) > 1:
        s = out_of_fold_scores(model, normals, opts)
    else:
        s = torch.cat(map_batches(model, normals, opts, _oc_scores))
    if model.config.scoring.calibration == "fused":
        # one mean and std for every scale: sum_s alpha(s) (s(s) - mu) / sd = (fused - mu) / sd
        s = (s @ model.alphas.to(s)).unsqueeze(1).expand_as(s)
    model.score_mean.copy_(s.mean(0))
    model.score_std.copy_(s.std(0).clamp_min(1e-8) if len(s) > 1 else torch.ones_like(s[0]))


def _oc_scores(model: AnoMemModel, x: torch.Tensor) -> torch.Tensor:
    """Eq. 9 per scale (B, S) of a float batch."""
    return model.oc_scores(model.deviation_maps(x))


@torch.no_grad()
def out_of_fold_scores(model: AnoMemModel, normals: torch.Tensor, opts: RunOptions) -> torch.Tensor:
    """Eq. 9 per scale (n, S) of each half of ``normals``, memories consolidated on the other half.

    Rows come half after half (the order of :func:`out_of_fold`'s folds), which
    the statistics of :func:`calibrate_scales` do not depend on.
    """
    flags = torch.ones(len(normals), dtype=torch.bool)
    folds, per_view = out_of_fold(model, normals, flags, opts,
                                  lambda deltas, v: [model.oc_scores(deltas)], "calibrate")
    scores = torch.cat([view[0] for view in per_view], dim=1)
    return torch.cat([scores[f] for f in folds])


@torch.no_grad()
def out_of_fold(model: AnoMemModel, images: torch.Tensor, normal: torch.Tensor, opts: RunOptions,
                fn: Callable[[list[torch.Tensor], int], list[torch.Tensor]], stream: str
                ) -> tuple[tuple[torch.Tensor, torch.Tensor], list[list[torch.Tensor]]]:
    """``fn`` of each image's deviations (Eq. 8) from memories consolidated without it.

    The images are split in two halves at random (seed stream ``stream``); each
    half is compared with a copy of the memories consolidated on the normal
    images (``normal``, bool (n,)) of the other half, so a training normal is
    never compared with prototypes fitted to it, as a new image is not; the
    anomalies are compared with the same half-memories, so both classes see
    memories of one quality.  The features are computed once per
    ``scoring.views`` view (one view's maps are held at a time; a view's memories
    serve its scales alone).  ``fn(deviations, view)`` maps the deviations of a
    batch at one view's scales to a list of tensors with one row per image;
    returns the folds and, per view, ``fn``'s output for every image in
    the order of ``images``.  The model's own memories are untouched.
    """
    g = torch.Generator().manual_seed(stream_seed(model.config.runtime.seed, stream))
    order = torch.randperm(len(images), generator=g)
    folds = (order[0::2], order[1::2])
    # per half: a copy of the memories and one consolidation stream, drawn from memory after
    # memory across the views (a view's consolidation moves only that view's memories)
    copies = [copy.deepcopy(model.memories) for _ in folds]
    streams = [consolidation_stream(model) for _ in folds]
    kept, out = model.memories, []
    try:
        for v in range(len(model.views)):
            maps, parts = feature_maps(model, images, opts, v), {}
            for fold, memories, g_fold in zip(folds, copies, streams):
                model.memories = memories
                others = normal.clone()
                others[fold] = False
                consolidate_on_maps(model, [z[others.to(z.device)] for z in maps], opts,
                                    scales=model.view_scales(v), generator=g_fold)
                for idx in fold.split(SCORE_BATCH):
                    parts[idx] = fn(model.deviations([z[idx.to(z.device)] for z in maps], v), v)
            out.append(_in_order(parts, len(images)))
    finally:
        model.memories = kept
        model.eval()
    return folds, out


def _in_order(parts: dict[torch.Tensor, list[torch.Tensor]], n: int) -> list[torch.Tensor]:
    """Rows ``parts[idx]`` (lists of tensors, one row per index) placed at ``idx`` of n rows."""
    first = next(iter(parts.values()))
    out = [torch.empty((n, *t.shape[1:]), dtype=t.dtype, device=t.device) for t in first]
    for idx, values in parts.items():
        for o, t in zip(out, values):
            o[idx.to(o.device)] = t
    return out


def fit_heads(model: AnoMemModel, images: torch.Tensor, y: torch.Tensor,
              fingerprint: dict[str, Any], opts: RunOptions,
              normals: torch.Tensor | None = None) -> list[dict[str, float]]:
    """Stage 2 of a semi-supervised fit on a trained stage 1: the heads and what they add to.

    With ``scoring.semi_score="heads+oc"`` the one-class scale scores the heads are
    added to are first calibrated on the normal ``images`` (:func:`calibrate_scales`;
    ``normals``, when the caller already holds ``images[y == 1]``, saves a copy);
    then :func:`train_heads`.  Returns the heads' loss history.
    """
    if model.config.scoring.semi_score == "heads+oc":
        calibrate_scales(model, images[y == 1] if normals is None else normals, opts)
    return train_heads(model, images, y, fingerprint, opts)


def train_heads(model: AnoMemModel, images: torch.Tensor, y: torch.Tensor,
                fingerprint: dict[str, Any], opts: RunOptions) -> list[dict[str, float]]:
    """Train the per-scale heads on frozen deviations of ``images`` with y (1 = normal)."""
    cfg = model.config
    heads = model.heads
    if heads is None:
        raise InvalidInputError("this network is one-class and has no heads; train them on "
                                "model.semi_supervised_copy() instead")
    for head in heads:          # the heads' initial weights, drawn now (as a new head's are)
        head.reset_parameters()
    heads.requires_grad_(True)
    phis, stats = _standardised(head_features(model, images, y, opts), cfg.stage2.head_inputs)
    weights = balanced_weights(y) if cfg.stage2.head_sampling == "balanced" else None
    y = y.to(opts.device)
    n = len(y)
    bsz = min(cfg.stage1.batch_size, n)
    per_epoch = max(1, n // bsz)
    total = cfg.stage2.epochs * per_epoch
    opt, sched = sgd_cosine(list(heads.parameters()), cfg.stage2.lr, cfg.stage1.momentum,
                            cfg.stage1.weight_decay, total)
    ckpt = opts.checkpoint_dir / "stage2.ckpt" if opts.checkpoint_dir else None
    modules = {"heads": heads, "opt": opt, "sched": sched}
    start, history, running = 0, [], 0.0
    if ckpt is not None and ckpt.is_file():
        start, extra = load_checkpoint(ckpt, modules, fingerprint)
        history, running = extra.get("history", []), float(extra.get("running", 0.0))
    heads.train()
    for step in tqdm(range(start, total), desc="stage 2", disable=not (opts.progress and opts.is_main),
                     unit="step", dynamic_ncols=True):
        epoch, i = divmod(step, per_epoch)
        idx = _batch(step, n, bsz, per_epoch, weights, cfg.runtime.seed).to(opts.device)
        d = torch.stack([h.mlp(p[idx]).squeeze(-1) for h, p in zip(heads, phis)])
        loss = sup_loss(d, y[idx], cfg.stage2.margin)
        value = check_finite(loss, step + 1, "stage 2", "stage2.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += value
        if opts.log is not None and opts.is_main:
            opts.log({"stage": 2, "step": step + 1, "epoch": epoch + 1, "loss": value})
        if i == per_epoch - 1:
            history.append({"epoch": epoch + 1, "loss": running / per_epoch})
            running = 0.0
        if ckpt is not None and ((step + 1) % opts.checkpoint_every == 0 or step + 1 == total):
            check_finite_parameters(heads, step + 1, "stage 2", "stage2.lr")
            if opts.is_main:
                save_checkpoint(ckpt, step + 1, modules, fingerprint,
                                {"history": history, "running": running})
    for head, (mu, sd) in zip(heads, stats):
        fold_standardisation(head.mlp[0], mu, sd)
    model.oc_weight.fill_(one_class_weight(cfg.scoring.oc_evidence, int((y == 0).sum())))
    model.eval()
    return history


def _standardised(phis: list[torch.Tensor], inputs: str
                  ) -> tuple[list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
    """``stage2.head_inputs="standardised"``: each phi(Delta(s)) standardised with its training
    mean and std, and those statistics (none for ``"raw"``)."""
    if inputs != "standardised":
        return phis, []
    stats = [(p.mean(0), p.std(0).clamp_min(1e-6) if len(p) > 1 else torch.ones_like(p[0]))
             for p in phis]
    return [(p - mu) / sd for p, (mu, sd) in zip(phis, stats)], stats


def _batch(step: int, n: int, bsz: int, per_epoch: int, weights: torch.Tensor | None,
           seed: int) -> torch.Tensor:
    """The images of stage-2 step ``step``: its slice of the epoch's permutation of the ``n``
    images or, with sampling ``weights``, of the epoch's draws with replacement."""
    epoch, i = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 100_003 + 7 + epoch)
    if weights is None:
        return torch.randperm(n, generator=g)[i * bsz:(i + 1) * bsz]
    return torch.multinomial(weights, per_epoch * bsz, replacement=True, generator=g)[i * bsz:(i + 1) * bsz]


@torch.no_grad()
def head_features(model: AnoMemModel, images: torch.Tensor, y: torch.Tensor,
                  opts: RunOptions) -> list[torch.Tensor]:
    """phi(Delta(s)) (Eq. 10) of every training image at every scale: the heads' inputs.

    ``stage2.head_deviations="out_of_fold"`` (with consolidation and at least two normal
    images): each image's deviations come from memories consolidated without it
    (:func:`out_of_fold`, seed stream ``"heads"``).  Consolidation makes the
    memories prototypes of the training normals, so their in-sample deviations
    are biased towards 0 (measured on digits: every training normal had
    Delta = 0 at the pooled stage-3 scale, while new normals did not, and the
    heads called 39 % of new normals anomalous); out of fold, a training
    normal deviates as a new normal does.  ``"in_sample"`` (the paper's
    reading; the only one without consolidation): the fitted memories.
    """
    heads = model.heads
    if (model.config.stage2.head_deviations == "out_of_fold" and model.config.consolidates
            and int((y == 1).sum()) > 1):
        def phi(deltas: list[torch.Tensor], v: int) -> list[torch.Tensor]:
            return [heads[s.index].phi(d) for s, d in zip(model.view_scales(v), deltas)]

        _, per_view = out_of_fold(model, images, (y == 1).cpu(), opts, phi, "heads")
        return [p for view in per_view for p in view]
    feats = map_batches(model, images, opts,
                        lambda m, x: [h.phi(d) for h, d in zip(heads, m.deviation_maps(x))])
    return [torch.cat([b[s] for b in feats]) for s in range(len(heads))]


def one_class_weight(evidence: float | None, n_anomalies: int) -> float:
    """The one-class score's weight beside the clipped heads: sqrt(evidence / n_anomalies).

    The heads learn from ``n_anomalies`` labelled anomalies; the standardised
    one-class score needs none and counts as ``evidence`` of them.  The
    uncertainty of what the heads learned shrinks as 1 / sqrt(n_anomalies), so
    the one-class score's share falls the same way: weight 1 (the two alike)
    at ``n_anomalies = evidence``, and with 25 times as many anomalies a fifth
    of it.  ``None`` keeps weight 1 whatever the count.  The paper is silent
    (its score is the heads alone).  The best weight measured on four image
    sets fell as n_anomalies^-0.54 (digits, 6 anomalies: 0.5-1; defect tiles,
    25: 0.25; CIFAR-10 at 1,000 normals, 53: 0.125; at 5,000, 263:
    0.06-0.125), and the default ``evidence`` 2 sits among them; the rows are
    in ``docs/design.md``.

    Example:
        >>> one_class_weight(4.0, 16), one_class_weight(None, 16)
        (0.5, 1.0)
    """
    if evidence is None:
        return 1.0
    return math.sqrt(evidence / max(n_anomalies, 1))


def balanced_weights(y: torch.Tensor) -> torch.Tensor:
    """Sampling weights (n,): the normal images share half the mass, the anomalous ones the other half."""
    w = torch.where(y == 1, 0.5 / (y == 1).sum().clamp_min(1), 0.5 / (y == 0).sum().clamp_min(1))
    return w.float().cpu()


@torch.no_grad()
def fold_standardisation(layer: torch.nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Fold the input standardisation (x - mean) / std into ``layer``, so it takes raw x.

    W' = W / std, b' = b - W' mean: the head trained on standardised phi(Delta)
    becomes a plain MLP on phi(Delta), which export and localisation use as is.
    """
    layer.weight.div_(std)
    layer.bias.sub_(layer.weight @ mean)
