"""The model file of :meth:`anomem.AnoMem.save`: what it holds and how it is read back.

One versioned dictionary of tensors and plain values (no pickled objects),
written atomically with a checksum by :func:`anomem.serialization.atomic_torch_save`.
Reading checks the format, the version, the checksum, every field's type and
that the weights fit the network the stored configuration describes, before
anything is allocated.  A file of an earlier version is first brought to the
current one (:func:`upgrade`).

Versions: 1 held the configuration with flat keys (``stage1_epochs``); 2 holds
it by section (``{"stage1": {"epochs": ...}}``, :func:`anomem.config.to_dict`),
and k-means prototypes (Table 4) as the patterns of the memories they fill
(``memories.K.patterns``, where version 1 had ``memories.K.centroids``).
Within a version, fields come and go without a new number: a configuration key
added since a file was written reads as the file was made (:data:`ADDED_KEYS`),
and a file from before the pixel threshold loads without one (None).

An ensemble file (:meth:`anomem.ensemble.AnoMemEnsemble.save`, format
``anomem-ensemble``, version 1) holds one such dictionary per member (each
checked as a model file's), the members' score standardisers and the
ensemble's thresholds; :func:`read_any_model_file` reads either kind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomem import __version__
from anomem.base import is_real
from anomem.config import AnoMemConfig, dotted, from_dict, migrate, to_dict
from anomem.errors import ModelFileError
from anomem.serialization import require_checksum, safe_torch_load
from anomem.torch_model import AnoMemModel

MODEL_FORMAT = "anomem-model"
MODEL_VERSION = 2
ENSEMBLE_FORMAT = "anomem-ensemble"
ENSEMBLE_VERSION = 1
#: The per-member standardisers an ensemble file holds (:mod:`anomem.ensemble`).
ENSEMBLE_STATS = ("score_loc", "score_scale", "map_loc", "map_scale")
#: What a command or call expecting a model file wants instead of what it was given.
EXPECTED = "a model file written by 'anomem fit' or AnoMem.save"

#: Keys (flat, as version 1 named them) that version-1 files written before they existed lack,
#: with the value those files were made with: memories that never grew, a stage 1 without
#: pseudo-anomalies, one view, image-level scales weighed last, uniform batches for the heads,
#: the one-class score weighed as much as they are, and heads trained on the deviations of the
#: memories' own training normals.
LEGACY_CONFIG = {"consolidate_factor": 1, "pseudo_anomalies": "none", "score_views": "single",
                 "image_alpha": "last", "head_sampling": "uniform", "oc_evidence": None,
                 "head_deviations": "in_sample"}


#: Keys (``section.key``) that files written before they existed lack, with the value those
#: files were made with (whatever the default is now): convolutions padded with zeros, heatmaps
#: of every map scale, computed on the input alone, stage 1's batch never shrunk, its rate as
#: configured (the default, too), local defects of the base size (scale 1), heatmaps read as
#: computed (no per-pixel standardisation) and read from the memory's deviations (a fine-tuned
#: head, had there been one, at the memory's map stages).
ADDED_KEYS = {"backbone.padding": "zeros", "scoring.heatmap_scales": "all",
              "scoring.heatmap_margin": 0.0, "stage1.min_batches": 0, "stage1.lr_scaling": "none",
              "extensions.defect_scale": 1.0, "scoring.heatmap_calibration": "none",
              "scoring.heatmap_reader": "memory", "scoring.head_stages": ()}


@dataclass
class ModelFile:
    """The content of a model file, checked: configuration, network (on the CPU), thresholds."""

    config: AnoMemConfig
    network: AnoMemModel
    threshold: float | None
    threshold_frr_bound: float | None
    threshold_normals: int
    pixel_threshold: float | None = None


@dataclass
class EnsembleFile:
    """The content of an ensemble file: its members, their score standardisers
    (:data:`ENSEMBLE_STATS`, one value per member), the ensemble's thresholds and the share of
    the training normals each member trained on (``subsample``)."""

    members: list[ModelFile]
    stats: dict[str, np.ndarray]
    seed: int
    threshold: float | None
    threshold_frr_bound: float | None
    threshold_normals: int
    pixel_threshold: float | None = None
    subsample: float = 1.0


def model_blob(network: AnoMemModel, threshold: float | None = None, frr_bound: float | None = None,
               normals: int = 0, pixel_threshold: float | None = None) -> dict[str, Any]:
    """The dictionary :meth:`anomem.AnoMem.save` writes for a fitted ``network``."""
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    return {"format": MODEL_FORMAT, "version": MODEL_VERSION, "anomem_version": __version__,
            "config": to_dict(network.config), "semi_supervised": network.semi_supervised,
            "kmeans": network.config.memory.prototypes == "kmeans", "threshold": threshold,
            "threshold_frr_bound": frr_bound, "threshold_normals": normals,
            "pixel_threshold": pixel_threshold, "state_dict": state}


def upgrade(blob: dict[str, Any]) -> dict[str, Any]:
    """A model file's dictionary brought from its version to :data:`MODEL_VERSION`.

    Version 1 to 2: the flat configuration, completed with :data:`LEGACY_CONFIG`,
    goes to the sections' form (:func:`anomem.config.migrate`); k-means
    centroids become the patterns of their memories, and files from before the
    ``oc_weight`` buffer get weight 1 (heads and one-class score weighed alike).
    A file of the current version is returned as it is.
    """
    if blob.get("version") != 1:
        return blob
    if not isinstance(blob.get("config"), dict) or not isinstance(blob.get("state_dict"), dict):
        raise TypeError("the configuration or the weights are not a mapping")
    state = {"oc_weight": torch.ones(()),
             **{re.sub(r"^(memories\.\d+)\.centroids$", r"\1.patterns", k): v
                for k, v in blob["state_dict"].items()}}
    return {**blob, "version": 2, "config": migrate({**LEGACY_CONFIG, **blob["config"]}, version=1),
            "state_dict": state}


def _threshold_fields(blob: dict[str, Any]) -> tuple[float | None, float | None, int, float | None]:
    """Threshold, its false-alarm bound, held-out count and pixel threshold, checked, from a
    model file.

    Files written before the bound was stored lack the bound and the count: None and 0;
    files written before the pixel threshold lack it: None.
    """
    threshold, bound = blob["threshold"], blob.get("threshold_frr_bound")
    normals, pixel = blob.get("threshold_normals", 0), blob.get("pixel_threshold")
    for name, value in (("threshold", threshold), ("pixel_threshold", pixel)):
        if not (value is None or (is_real(value) and not np.isnan(value))):
            raise TypeError(f"{name} {value!r} is not a number")
    if not (bound is None or (is_real(bound) and 0 <= bound <= 1)):
        raise TypeError(f"threshold_frr_bound {bound!r} is not a rate in [0, 1]")
    if not (isinstance(normals, int) and not isinstance(normals, bool) and normals >= 0):
        raise TypeError(f"threshold_normals {normals!r} is not a count")
    return (None if threshold is None else float(threshold), None if bound is None else float(bound),
            normals, None if pixel is None else float(pixel))


def _network(blob: dict[str, Any], cfg: AnoMemConfig) -> AnoMemModel:
    """The network of a model file, its weights checked against ``cfg`` before allocation."""
    state = blob["state_dict"]
    if not all(isinstance(blob[k], bool) for k in ("kmeans", "semi_supervised")):
        raise TypeError("kmeans / semi_supervised flags are not booleans")
    if not all(isinstance(t, torch.Tensor) and (not t.is_floating_point()
                                                or bool(torch.isfinite(t).all()))
               for t in state.values()):
        raise ValueError("the weights are not all finite tensors")
    if blob["kmeans"] != (cfg.memory.prototypes == "kmeans"):
        raise ValueError("the kmeans flag contradicts the configuration's prototypes")
    side = cfg.backbone.image_size   # files written before the heatmap's standardisation: none
    state = {"map_loc": torch.zeros(side, side), "map_scale": torch.ones(side, side), **state}
    with torch.device("meta"):   # nothing is allocated until the weights fit the config
        model = AnoMemModel(cfg, semi_supervised=blob["semi_supervised"])
    wanted = {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}
    if wanted != {k: (v.shape, v.dtype) for k, v in state.items()}:
        raise ValueError("the weights do not fit the network its configuration describes")
    model.load_state_dict(state, assign=True)
    if not bool((model.map_scale > 0).all()):
        raise ValueError("the heatmap's map_scale is not positive everywhere")
    for module in model.modules():    # buffers no file holds (stage 1's win counts) start at zero
        for name, buf in module.named_buffers(recurse=False):
            if buf.is_meta:
                setattr(module, name, torch.zeros_like(buf, device="cpu"))
    return model


def _check_version(blob: dict[str, Any], path: str | Path, what: str) -> None:
    if blob.get("version") not in range(1, MODEL_VERSION + 1):
        raise ModelFileError(
            f"{what} {str(path)!r} has format version {blob.get('version')} (written by "
            f"anomem {blob.get('anomem_version')}); this anomem {__version__} reads version "
            f"1 to {MODEL_VERSION}: install the matching anomem or re-fit the model")


def _model(blob: dict[str, Any], path: str | Path, what: str = "model file") -> ModelFile:
    """The checked content of one model's dictionary (a model file's, or an ensemble member's)."""
    _check_version(blob, path, what)
    try:
        blob = upgrade(blob)
        cfg = from_dict({**ADDED_KEYS, **dotted(blob["config"])})
        thresholds = _threshold_fields(blob)
        network = _network(blob, cfg)
    except (KeyError, IndexError, AttributeError, RuntimeError, TypeError, ValueError) as e:
        reason = " ".join(str(e).split())[:300]
        raise ModelFileError(f"{what} {str(path)!r} is inconsistent ({reason}); re-fit "
                             f"and save the model again") from None
    return ModelFile(cfg, network, *thresholds)


def read_any_model_file(path: str | Path) -> ModelFile | EnsembleFile:
    """Read and check a file of :meth:`anomem.AnoMem.save` or
    :meth:`anomem.ensemble.AnoMemEnsemble.save` (tensors and plain values only).

    Raises:
        ModelFileError: missing, not a model file, corrupt, unsafe, inconsistent or
            other-version file; the message names the file and the fix.
    """
    blob = safe_torch_load(path, "model file", expected=EXPECTED)
    if blob.get("format") not in (MODEL_FORMAT, ENSEMBLE_FORMAT):
        raise ModelFileError(f"{str(path)!r} is a torch file but not an anomem model file (no "
                             f"format {MODEL_FORMAT!r}: e.g. a training checkpoint or a bare "
                             f"state_dict); pass {EXPECTED}")
    if blob["format"] == MODEL_FORMAT:
        _check_version(blob, path, "model file")
        require_checksum(blob, "model file", path)
        return _model(blob, path)
    if blob.get("version") != ENSEMBLE_VERSION:
        raise ModelFileError(f"ensemble file {str(path)!r} has format version {blob.get('version')}; "
                             f"this anomem {__version__} reads version {ENSEMBLE_VERSION}: install "
                             f"the matching anomem or re-fit the ensemble")
    require_checksum(blob, "ensemble file", path)
    members = blob.get("members")
    if not isinstance(members, list) or not members or not all(isinstance(m, dict) for m in members):
        raise ModelFileError(f"ensemble file {str(path)!r} holds no member models; re-fit and "
                             f"save the ensemble again")
    found = [_model(m, path, "ensemble file") for m in members]
    try:
        stats = {k: _vector(blob[k], len(found), k) for k in ENSEMBLE_STATS}
        seed = blob["seed"]
        if not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2 ** 32):
            raise TypeError(f"seed {seed!r} is not a seed")
        thresholds = _threshold_fields(blob)
        subsample = blob.get("subsample", 1.0)      # files written before it was saved: 1.0
        if not (is_real(subsample) and 0 < subsample <= 1):
            raise TypeError(f"subsample {subsample!r} is not a share in (0, 1]")
    except (KeyError, TypeError, ValueError) as e:
        reason = " ".join(str(e).split())[:300]
        raise ModelFileError(f"ensemble file {str(path)!r} is inconsistent ({reason}); re-fit "
                             f"and save the ensemble again") from None
    return EnsembleFile(found, stats, seed, *thresholds, subsample=float(subsample))


def _vector(v: Any, n: int, name: str) -> np.ndarray:
    """A finite float64 vector of length ``n`` from a list of numbers."""
    if not (isinstance(v, list) and len(v) == n and all(is_real(e) for e in v)):
        raise TypeError(f"{name} is not a list of {n} numbers")
    out = np.asarray(v, dtype=np.float64)
    if not np.isfinite(out).all():
        raise ValueError(f"{name} is not finite")
    return out


def read_model_file(path: str | Path) -> ModelFile:
    """Read and check a file written by :meth:`anomem.AnoMem.save` (tensors and plain values only).

    Raises:
        ModelFileError: missing, not a model file, corrupt, unsafe, inconsistent or
            other-version file, or an ensemble's file; the message names the file and the fix.
    """
    found = read_any_model_file(path)
    if isinstance(found, EnsembleFile):
        raise ModelFileError(f"{str(path)!r} holds an ensemble of {len(found.members)} models; load "
                             f"it with AnoMemEnsemble.load or anomem.load_detector")
    return found
