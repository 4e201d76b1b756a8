"""Which values every configuration key accepts, and the check of one section.

:func:`validate_section` raises :class:`~anomem.errors.ConfigError` naming the
first key of a section (as ``section.key``) whose value is out of range or of
the wrong type.  :data:`RULES` holds one rule per key: a function of the value
that returns what is wrong with it, or None.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

from anomem.errors import ConfigError

ARCHS = ("resnet18", "resnet34", "resnet50")
STEMS = ("cifar", "imagenet")
PADDINGS = ("zeros", "replicate")
NEGATIVES = ("all", "same_position")
PROTOTYPES = ("hopfield", "kmeans")
MEMORY_INITS = ("random", "data")
VIEW_GEOMETRIES = ("independent", "shared", "aligned")
LR_SCALINGS = ("linear", "sqrt", "none")
GLOBAL_MEMORIES = ("own", "shared", "every", "none")
VARIANCES = ("components", "batch")
SCALE_NORMS = ("frobenius", "rms")
SEMI_SCORES = ("heads", "heads+oc")
PROJECTORS = ("none", "mlp")
PSEUDO_ANOMALIES = ("none", "rotation", "local")
HEAD_SAMPLINGS = ("uniform", "balanced")
HEAD_INPUTS = ("standardised", "raw")
HEAD_DEVIATIONS = ("out_of_fold", "in_sample")
RECIPE_NAMES = ("tuned", "paper")
#: Test-time views of ``scoring.views``: the image dimensions each view flips, (B, C, H, W).
SCORE_VIEWS = {"single": ((),), "mirror": ((), (3,)), "flips": ((), (3,), (2,), (2, 3))}
CALIBRATIONS = ("scales", "fused")
IMAGE_ALPHAS = ("stage", "last")
HEATMAP_SCALES = ("finest", "all")
HEATMAP_CALIBRATIONS = ("none", "position")
HEATMAP_READERS = ("memory", "head", "tuned")
SCORE_RETRIEVALS = ("nearest", "hopfield")

Rule = Callable[[Any], "str | None"]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def one_of(allowed: tuple[str, ...] | dict[str, Any]) -> Rule:
    """The value is one of ``allowed``."""
    return lambda v: None if v in allowed else f"got {v!r}, expected one of {', '.join(allowed)}"


def integer(low: int) -> Rule:
    """An int (not a bool) of at least ``low`` (0 or 1)."""
    what = {0: "a non-negative integer", 1: "a positive integer"}[low]
    return lambda v: None if _is_int(v) and v >= low else f"must be {what}, got {v!r}"


def _seed(v: Any) -> str | None:
    return integer(0)(v) or (None if v < 2 ** 32 else f"must be below 2**32, got {v!r}")


def positive(v: Any) -> str | None:
    return None if _is_number(v) and v > 0 else f"must be a positive finite number, got {v!r}"


def non_negative(v: Any) -> str | None:
    return None if _is_number(v) and v >= 0 else f"must be a non-negative finite number, got {v!r}"


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"must be true or false, got {v!r}"


def span(low: float, high: float) -> Rule:
    """A pair [lo, hi] of numbers with low < lo <= hi <= high."""
    def rule(v: Any) -> str | None:
        if (isinstance(v, (tuple, list)) and len(v) == 2 and all(map(_is_number, v))
                and low < v[0] <= v[1] <= high):
            return None
        upper = f" <= {high:g}" if math.isfinite(high) else ""
        return f"must be [low, high] with {low:g} < low <= high{upper}, got {v!r}"
    return rule


def _stages(v: Any) -> str | None:
    if len(v) == 0:
        return "needs at least one stage"
    ok = all(_is_int(s) and 1 <= s <= 4 for s in v) and list(v) == sorted(set(v))
    return None if ok else f"must be increasing stage numbers in 1..4, got {v!r}"


RULES: dict[str, Rule] = {
    "recipe": one_of(RECIPE_NAMES),
    "backbone.arch": one_of(ARCHS), "backbone.width": integer(1),
    "backbone.stem": one_of(STEMS), "backbone.image_size": integer(1),
    "backbone.padding": one_of(PADDINGS),
    "memory.stages": _stages,
    "memory.sizes": lambda v: None if all(_is_int(m) and m >= 1 for m in v)
    else f"must be positive integers, got {v!r}",
    "memory.ratios": lambda v: None if all(_is_number(r) and 0 < r <= 1 for r in v)
    else f"must be in (0, 1], got {v!r}",
    "memory.beta": positive, "memory.normalize": boolean, "memory.hopfield_steps": integer(1),
    "memory.hopfield_tol": positive, "memory.use_memory": boolean,
    "memory.prototypes": one_of(PROTOTYPES), "memory.init": one_of(MEMORY_INITS),
    "stage1.tau": positive, "stage1.lambda_v": non_negative, "stage1.variance": one_of(VARIANCES),
    "stage1.negatives": one_of(NEGATIVES), "stage1.batch_size": integer(1),
    "stage1.epochs": integer(0), "stage1.min_batches": integer(0), "stage1.lr": positive,
    "stage1.momentum": non_negative,
    "stage1.weight_decay": non_negative, "stage1.crop_scale": span(0, 1),
    "stage1.jitter": non_negative, "stage1.blur_sigma": span(0, math.inf),
    "stage1.noise_std": non_negative, "stage1.view_geometry": one_of(VIEW_GEOMETRIES),
    "stage1.lr_scaling": one_of(LR_SCALINGS),
    "stage2.margin": positive, "stage2.head_hidden": integer(1), "stage2.head_pool": integer(1),
    "stage2.epochs": integer(0), "stage2.lr": positive, "stage2.head_sampling": one_of(HEAD_SAMPLINGS),
    "stage2.head_inputs": one_of(HEAD_INPUTS), "stage2.head_deviations": one_of(HEAD_DEVIATIONS),
    "scoring.retrieval": one_of(SCORE_RETRIEVALS), "scoring.views": one_of(SCORE_VIEWS),
    "scoring.scale_norm": one_of(SCALE_NORMS), "scoring.semi_score": one_of(SEMI_SCORES),
    "scoring.oc_evidence": lambda v: None if v is None or non_negative(v) is None
    else f"must be null or a non-negative finite number, got {v!r}",
    "scoring.calibrate": boolean, "scoring.calibration": one_of(CALIBRATIONS),
    "scoring.image_alpha": one_of(IMAGE_ALPHAS),
    "scoring.heatmap_scales": one_of(HEATMAP_SCALES),
    "scoring.heatmap_calibration": one_of(HEATMAP_CALIBRATIONS),
    "scoring.heatmap_reader": one_of(HEATMAP_READERS),
    "scoring.head_stages": lambda v: None if len(v) == 0 else _stages(v),
    "scoring.heatmap_margin": lambda v: None if _is_number(v) and 0.0 <= v < 1.0
    else f"must be in [0, 1) (a fraction of the input side), got {v!r}",
    "scoring.target_frr": lambda v: None if _is_number(v) and 0.0 <= v < 1.0
    else f"must be in [0, 1), got {v!r}",
    "extensions.global_memory": one_of(GLOBAL_MEMORIES), "extensions.global_mem_factor": integer(1),
    "extensions.reseed_dead": boolean, "extensions.consolidate": integer(0),
    "extensions.consolidate_factor": integer(1), "extensions.projector": one_of(PROJECTORS),
    "extensions.pseudo_anomalies": one_of(PSEUDO_ANOMALIES),
    "extensions.pseudo_fraction": lambda v: None if _is_number(v) and 0.0 < v <= 1.0
    else f"must be in (0, 1], got {v!r}",
    "extensions.defect_scale": lambda v: None if _is_number(v) and 0.0 < v <= 4.0
    else f"must be in (0, 4] (a factor on the defects' sizes, 2 by default), got {v!r}",
    "extensions.contrast_anomalies": boolean,
    "extensions.position_hinge": non_negative,
    "extensions.weight_average": lambda v: None if _is_number(v) and 0.0 <= v <= 1.0
    else f"must be in [0, 1], got {v!r}",
    "extensions.batchnorm_pass": boolean,
    "runtime.seed": _seed, "runtime.device": lambda v: None if isinstance(v, str) and
    re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) else f"expected auto, cpu, cuda or cuda:N, got {v!r}",
    "runtime.amp": boolean, "runtime.channels_last": boolean,
    "runtime.malloc_mmap_threshold": integer(0),
}


def fail(key: str, msg: str) -> None:
    raise ConfigError(f"config key {key!r}: {msg}")


def check(key: str, value: Any) -> None:
    """Raise ConfigError when ``value`` is not one ``key`` (dotted) accepts."""
    msg = RULES[key](value)
    if msg is not None:
        fail(key, msg)


def validate_section(name: str, section: Any) -> None:
    """Raise ConfigError for the first key of the section ``name`` holding an invalid value.

    The memory section also needs as many ``sizes`` and ``ratios`` as ``stages``.
    """
    try:
        for f in dataclasses.fields(section):
            check(f"{name}.{f.name}", getattr(section, f.name))
        if name == "memory" and not len(section.stages) == len(section.sizes) == len(section.ratios):
            fail("memory.sizes", f"memory.stages, memory.sizes and memory.ratios must have the same "
                                 f"length, got {len(section.stages)}, {len(section.sizes)}, "
                                 f"{len(section.ratios)}")
        if name == "scoring" and section.head_stages and section.heatmap_reader == "head":
            fail("scoring.head_stages", "the frozen head reads the memory's map scales; set "
                                        "scoring.heatmap_reader=tuned or leave head_stages empty")
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # a value of the wrong type, e.g. a number for a list
        raise ConfigError(f"invalid config value: {e}") from None
