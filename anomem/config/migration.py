"""Configuration versions: the flat keys of version 1 and the one upgrade to the sections.

Version 1 (model files of format version 1, YAML files and scripts written
before the sections) named every key flat (``stage1_epochs``); version 2 groups
them in sections (``stage1.epochs``).  Flat names stay valid input everywhere a
user passes keys, since each names exactly one key: :func:`migrate` reads them.

Example:
    >>> migrate({"stage1_epochs": 3, "beta": 2.0, "memory.normalize": False}, version=1)
    {'stage1': {'epochs': 3}, 'memory': {'beta': 2.0, 'normalize': False}}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from anomem.errors import ConfigError

#: The configuration version this package writes.
CONFIG_VERSION = 2

#: Every key's flat name (version 1's, and one for each key added since) and its name since version 2.
FLAT_NAMES: dict[str, str] = {
    "recipe": "recipe",
    **{k: f"backbone.{k}" for k in ("arch", "width", "stem", "image_size", "padding")},
    "memory_stages": "memory.stages", "mem_sizes": "memory.sizes", "memory_init": "memory.init",
    **{k: f"memory.{k}" for k in ("ratios", "beta", "normalize", "hopfield_steps", "hopfield_tol",
                                  "use_memory", "prototypes")},
    **{k: f"stage1.{k}" for k in ("tau", "lambda_v", "variance", "negatives", "batch_size",
                                  "crop_scale", "jitter", "blur_sigma", "noise_std", "view_geometry")},
    **{f"stage1_{k}": f"stage1.{k}" for k in ("epochs", "lr", "momentum", "weight_decay", "min_batches",
                                              "lr_scaling")},
    **{k: f"stage2.{k}" for k in ("margin", "head_hidden", "head_pool", "head_sampling",
                                  "head_inputs", "head_deviations")},
    **{f"stage2_{k}": f"stage2.{k}" for k in ("epochs", "lr")},
    "score_retrieval": "scoring.retrieval", "score_views": "scoring.views",
    **{k: f"scoring.{k}" for k in ("scale_norm", "semi_score", "oc_evidence", "calibrate",
                                   "calibration", "image_alpha", "heatmap_scales", "heatmap_margin",
                                   "heatmap_calibration", "heatmap_reader", "head_stages",
                                   "target_frr")},
    **{k: f"extensions.{k}" for k in ("global_memory", "global_mem_factor", "reseed_dead",
                                      "consolidate", "consolidate_factor", "projector",
                                      "pseudo_anomalies", "pseudo_fraction", "defect_scale",
                                      "position_hinge", "contrast_anomalies",
                                      "weight_average", "batchnorm_pass")},
    **{k: f"runtime.{k}" for k in ("seed", "device", "amp", "channels_last", "malloc_mmap_threshold")},
}


def migrate(d: Mapping[Any, Any], version: int) -> dict[Any, Any]:
    """A configuration mapping written with the keys of ``version``, in the sections' form.

    From version 1, every flat name becomes its section's key (:data:`FLAT_NAMES`).
    Keys of later versions pass as they are, so a mapping may mix them:
    ``section.key`` names and ``{section: {key: value}}`` mappings are both
    grouped by section.  When two keys name the same one, the later wins (as
    in a dict merge).  Unknown keys are kept for the caller to report.

    Raises:
        ConfigError: ``version`` is not a configuration version.
    """
    if version not in range(1, CONFIG_VERSION + 1):
        raise ConfigError(f"configuration version {version!r} is unknown: this anomem reads versions "
                          f"1 to {CONFIG_VERSION}; install the anomem that wrote it")
    renames = FLAT_NAMES if version == 1 else {}
    out: dict[Any, Any] = {}
    for key, value in d.items():
        if isinstance(key, str):
            key = renames.get(key, key)
            if "." in key:
                section, name = key.split(".", 1)
                key, value = section, {name: value}
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = dict(value) if isinstance(value, Mapping) else value
    return out
