"""Which values every :class:`~anomem.config.AnoMemConfig` key accepts, and the check.

:func:`validate` raises :class:`~anomem.errors.ConfigError` naming the first key
whose value is out of range or of the wrong type.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from anomem.errors import ConfigError

if TYPE_CHECKING:
    from anomem.config import AnoMemConfig

ARCHS = ("resnet18", "resnet34", "resnet50")
STEMS = ("cifar", "imagenet")
NEGATIVES = ("all", "same_position")
PROTOTYPES = ("hopfield", "kmeans")
MEMORY_INITS = ("random", "data")
VIEW_GEOMETRIES = ("independent", "shared", "aligned")
GLOBAL_MEMORIES = ("own", "shared", "every", "none")
VARIANCES = ("components", "batch")
SCALE_NORMS = ("frobenius", "rms")
SEMI_SCORES = ("heads", "heads+oc")
PROJECTORS = ("none", "mlp")
PSEUDO_ANOMALIES = ("none", "rotation")
HEAD_SAMPLINGS = ("uniform", "balanced")
HEAD_INPUTS = ("standardised", "raw")
HEAD_DEVIATIONS = ("out_of_fold", "in_sample")
RECIPE_NAMES = ("tuned", "paper")
#: Test-time views of ``score_views``: the image dimensions each view flips, (B, C, H, W).
SCORE_VIEWS = {"single": ((),), "mirror": ((), (3,)), "flips": ((), (3,), (2,), (2, 3))}
CALIBRATIONS = ("scales", "fused")
IMAGE_ALPHAS = ("stage", "last")
SCORE_RETRIEVALS = ("nearest", "hopfield")


def _fail(key: str, msg: str) -> None:
    raise ConfigError(f"config key {key!r}: {msg}")


def _is_number(v: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_range(v: Any, low: float, high: float) -> bool:
    """A pair (lo, hi) of numbers with low < lo <= hi <= high."""
    return (isinstance(v, (tuple, list)) and len(v) == 2 and all(map(_is_number, v))
            and low < v[0] <= v[1] <= high)


def validate(c: AnoMemConfig) -> None:
    """Raise ConfigError for the first key of ``c`` that holds an invalid value."""
    for key, allowed in (("arch", ARCHS), ("stem", STEMS), ("negatives", NEGATIVES),
                         ("prototypes", PROTOTYPES), ("memory_init", MEMORY_INITS),
                         ("view_geometry", VIEW_GEOMETRIES), ("global_memory", GLOBAL_MEMORIES),
                         ("variance", VARIANCES), ("scale_norm", SCALE_NORMS),
                         ("semi_score", SEMI_SCORES), ("score_retrieval", SCORE_RETRIEVALS),
                         ("projector", PROJECTORS), ("pseudo_anomalies", PSEUDO_ANOMALIES),
                         ("head_sampling", HEAD_SAMPLINGS), ("score_views", tuple(SCORE_VIEWS)),
                         ("calibration", CALIBRATIONS), ("image_alpha", IMAGE_ALPHAS),
                         ("head_inputs", HEAD_INPUTS), ("head_deviations", HEAD_DEVIATIONS),
                         ("recipe", RECIPE_NAMES)):
        if getattr(c, key) not in allowed:
            _fail(key, f"got {getattr(c, key)!r}, expected one of {', '.join(allowed)}")
    for key in ("width", "image_size", "batch_size", "hopfield_steps", "head_hidden", "head_pool",
                "global_mem_factor", "consolidate_factor"):
        v = getattr(c, key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            _fail(key, f"must be a positive integer, got {v!r}")
    for key in ("stage1_epochs", "stage2_epochs", "seed", "consolidate", "malloc_mmap_threshold"):
        v = getattr(c, key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            _fail(key, f"must be a non-negative integer, got {v!r}")
    if c.seed >= 2 ** 32:
        _fail("seed", f"must be below 2**32, got {c.seed!r}")
    for key in ("beta", "tau", "margin", "stage1_lr", "stage2_lr", "hopfield_tol"):
        v = getattr(c, key)
        if not _is_number(v) or not v > 0:
            _fail(key, f"must be a positive finite number, got {v!r}")
    for key in ("lambda_v", "stage1_momentum", "stage1_weight_decay", "jitter", "noise_std"):
        v = getattr(c, key)
        if not _is_number(v) or v < 0:
            _fail(key, f"must be a non-negative finite number, got {v!r}")
    for key in ("normalize", "use_memory", "calibrate", "amp", "channels_last", "reseed_dead",
                "contrast_anomalies"):
        if not isinstance(getattr(c, key), bool):
            _fail(key, f"must be true or false, got {getattr(c, key)!r}")
    if not _is_number(c.pseudo_fraction) or not 0.0 < c.pseudo_fraction <= 1.0:
        _fail("pseudo_fraction", f"must be in (0, 1], got {c.pseudo_fraction!r}")
    if c.oc_evidence is not None and (not _is_number(c.oc_evidence) or c.oc_evidence < 0):
        _fail("oc_evidence", f"must be null or a non-negative finite number, got {c.oc_evidence!r}")
    if not _is_number(c.target_frr) or not 0.0 <= c.target_frr < 1.0:
        _fail("target_frr", f"must be in [0, 1), got {c.target_frr!r}")
    n = len(c.memory_stages)
    if n == 0:
        _fail("memory_stages", "needs at least one stage")
    if len(c.mem_sizes) != n or len(c.ratios) != n:
        _fail("mem_sizes", f"memory_stages, mem_sizes and ratios must have the same length, "
                           f"got {len(c.memory_stages)}, {len(c.mem_sizes)}, {len(c.ratios)}")
    if not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 4
               for s in c.memory_stages) or list(c.memory_stages) != sorted(set(c.memory_stages)):
        _fail("memory_stages", f"must be increasing stage numbers in 1..4, got {c.memory_stages!r}")
    if not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in c.mem_sizes):
        _fail("mem_sizes", f"must be positive integers, got {c.mem_sizes!r}")
    if not all(_is_number(r) and 0 < r <= 1 for r in c.ratios):
        _fail("ratios", f"must be in (0, 1], got {c.ratios!r}")
    if not _is_range(c.crop_scale, 0, 1):
        _fail("crop_scale", f"must be [low, high] with 0 < low <= high <= 1, got {c.crop_scale!r}")
    if not _is_range(c.blur_sigma, 0, math.inf):
        _fail("blur_sigma", f"must be [low, high] with 0 < low <= high, got {c.blur_sigma!r}")
    if not (isinstance(c.device, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", c.device)):
        _fail("device", f"expected auto, cpu, cuda or cuda:N, got {c.device!r}")
