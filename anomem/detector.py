"""The AnoMem estimator: fit, decision_function, predict, save, load.

Scores follow one convention everywhere: **higher = more anomalous**.  Labels
given to :meth:`AnoMem.fit` mark anomalies with 1 (or True) and normal images
with 0; without labels, or with no anomaly among them, the detector is
one-class, otherwise semi-supervised (the same stage 1 in both cases).

Example:
    >>> from sklearn.datasets import load_digits
    >>> X, t = load_digits(return_X_y=True)
    >>> X = (X.reshape(-1, 8, 8) / 16.0)
    >>> det = AnoMem("digits", stage1_epochs=1).fit(X[t == 0][:40])
    >>> det.decision_function(X[:3]).shape
    (3,)
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomem import __version__
from anomem.base import Detector, is_real
from anomem.config import AnoMemConfig, from_dict, get_config, to_dict
from anomem.data.convert import to_image_tensor, to_normal_flags
from anomem.errors import InvalidInputError, ModelFileError, RequiresFitting
from anomem.localisation import anomaly_map
from anomem.presets import AUTO, auto_preset, input_side
from anomem.progress import auto_progress
from anomem.serialization import atomic_torch_save, require_checksum, safe_torch_load
from anomem.stages.common import RunOptions, map_batches
from anomem.stages.stage1 import train_stage1
from anomem.stages.stage2 import calibrate_scales, fit_heads, fit_kmeans_prototypes
from anomem.threshold import (
    ThresholdWarning,
    frr_upper_bound,
    held_out_warning,
    order_statistic_threshold,
    too_few,
)
from anomem.torch_model import AnoMemModel

MODEL_FORMAT = "anomem-model"
MODEL_VERSION = 1


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU.

    Raises:
        InvalidInputError: not a device name, or a CUDA device this machine does not have.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise InvalidInputError(f"device {name!r} is not a device name ({e}); use auto, cpu, "
                                f"cuda or cuda:N") from None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if dev.type == "cuda" and (dev.index or 0) >= count:
        raise InvalidInputError(f"device {name!r} is not available here ({count} CUDA device(s)); "
                                f"use device='cpu' or 'auto'")
    return dev


def _check_fit_options(checkpoint_dir: Any, log: Any, options: Any) -> None:
    """The types of :meth:`AnoMem.fit`'s ``checkpoint_dir``, ``log`` and ``options``."""
    if checkpoint_dir is not None and not isinstance(checkpoint_dir, (str, os.PathLike)):
        raise InvalidInputError(f"checkpoint_dir must be a folder path, got "
                                f"{type(checkpoint_dir).__name__}")
    if log is not None and not callable(log):
        raise InvalidInputError(f"log must be a function taking a dict of metrics, got "
                                f"{type(log).__name__}")
    if options is not None and not isinstance(options, RunOptions):
        raise InvalidInputError(f"options must be a RunOptions, got {type(options).__name__}")


def holdout_count(n_normal: int, fraction: float) -> int:
    """How many of ``n_normal`` normal images :meth:`AnoMem.fit` holds out for the threshold."""
    return int(n_normal * fraction)


def data_digest(images: torch.Tensor, y: torch.Tensor) -> str:
    """A short hash of a training set, so a checkpoint is only resumed on the same data."""
    h = hashlib.blake2b(digest_size=16)
    for t in (images, y):   # the tensors' own bytes, without a copy of the training set
        h.update(np.ascontiguousarray(t.numpy()).reshape(-1).view(np.uint8))
    return h.hexdigest()


def _threshold_fields(blob: dict[str, Any]) -> tuple[float | None, float | None, int]:
    """Threshold, its false-alarm bound and held-out count, checked, from a model file.

    Files written before the bound was stored lack the last two: None and 0.
    """
    threshold, bound = blob["threshold"], blob.get("threshold_frr_bound")
    normals = blob.get("threshold_normals", 0)
    if not (threshold is None or (is_real(threshold) and not np.isnan(threshold))):
        raise TypeError(f"threshold {threshold!r} is not a number")
    if not (bound is None or (is_real(bound) and 0 <= bound <= 1)):
        raise TypeError(f"threshold_frr_bound {bound!r} is not a rate in [0, 1]")
    if not (isinstance(normals, int) and not isinstance(normals, bool) and normals >= 0):
        raise TypeError(f"threshold_normals {normals!r} is not a count")
    return (None if threshold is None else float(threshold), None if bound is None else float(bound),
            normals)


#: Keys that say where and how fast a run goes, never what it computes: a checkpoint
#: resumes across them (a run started on one device finishes on another).
RUNTIME_KEYS = ("device", "amp", "channels_last", "malloc_mmap_threshold")


def run_fingerprint(cfg: AnoMemConfig, images: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the computing configuration and the data."""
    config = {k: v for k, v in to_dict(cfg).items() if k not in RUNTIME_KEYS}
    return {"config": config, "data": data_digest(images, y)}


class AnoMem(Detector):
    """Multi-scale contrasted-memory anomaly detector (one-class or semi-supervised).

    Args:
        config: a preset name, a YAML path or an :class:`~anomem.config.AnoMemConfig`.
            The presets (:data:`anomem.presets.PRESET_GUIDE`):

            * ``auto`` (default): ``digits``, ``cpu`` or ``mtd`` by the side of the
              training images before resizing (<= 24 px, <= 64 px, larger), chosen
              in :meth:`fit` (:func:`anomem.presets.auto_preset`); until then
              :attr:`config` holds the ``cpu`` preset;
            * ``digits``: tiny images (8-24 px), ResNet-18 width 8 at 16x16;
            * ``cpu``: small images (25-64 px, e.g. CIFAR-10), ResNet-18 width 16 at 32x32;
            * ``mtd``: larger images and localisation (> 64 px), ResNet-18 width 16 at
              128x128 with an ImageNet stem;
            * ``paper``: the paper's setup, for a GPU: ResNet-50 width 64 at 32x32,
              batch 1024, 200 epochs.
        **overrides: configuration keys to change, e.g. ``stage1_epochs=5`` (with
            ``auto``, on top of the chosen preset).

    Attributes:
        config: the configuration (with ``auto``: the chosen preset's, after :meth:`fit`).
        threshold_: score above which :meth:`predict` calls an image an anomaly.
        threshold_frr_bound_: upper 95 % confidence bound on the share of new normal
            images that threshold_ flags (:mod:`anomem.threshold`); None when the
            threshold does not come from held-out normals.
        threshold_normals_: how many held-out normal images set threshold_ (0: the
            training normals did, and no bound holds).
        history_: per-epoch training statistics of both stages.
    """

    def __init__(self, config: AnoMemConfig | str | Path = AUTO, **overrides: Any) -> None:
        self.preset = AUTO if isinstance(config, str) and config == AUTO else None
        self._overrides = dict(overrides)
        if isinstance(config, AnoMemConfig):
            self.config = config.replace(**overrides) if overrides else config
        else:
            self.config = get_config("cpu" if self.preset else config, overrides)
        self.model: AnoMemModel | None = None
        self.threshold_: float | None = None
        self.threshold_frr_bound_: float | None = None
        self.threshold_normals_: int = 0
        self.history_: dict[str, list[dict[str, float]]] = {}

    # ------------------------------------------------------------------ fitting
    def fit(self, images: Any, labels: Any = None, *, validation_fraction: float = 0.2,
            checkpoint_dir: str | Path | None = None, progress: bool | None = None,
            log: Any = None, options: RunOptions | None = None) -> AnoMem:
        """Train both stages on ``images`` (labels: 1 = anomaly, 0 = normal, or None).

        ``validation_fraction`` (default 0.2, as ``anomem fit``) of the normal
        images is held out of training and sets :attr:`threshold_`: the
        order statistic of their scores whose expected false-alarm rate is at
        most ``target_frr`` (:mod:`anomem.threshold`; a ``ThresholdWarning`` says
        when they are too few for that).  0 trains on every image and sets the
        threshold on the training normals, without a bound.  ``progress``:
        progress bars; None shows them on a terminal or in a notebook, not
        in redirected output.  With ``checkpoint_dir``, both stages
        checkpoint there and a rerun resumes where it stopped.
        """
        if self.preset == AUTO:
            self.config = get_config(auto_preset(input_side(images)), self._overrides)
        cfg = self.config
        x = to_image_tensor(images, cfg.image_size, "images")
        y = to_normal_flags(labels, len(x), "labels")
        if not is_real(validation_fraction) or not 0.0 <= validation_fraction < 1.0:
            raise InvalidInputError(f"validation_fraction must be a number in [0, 1), got "
                                    f"{validation_fraction!r}")
        _check_fit_options(checkpoint_dir, log, options)
        torch.manual_seed(cfg.seed)
        held = self._holdout(y, validation_fraction)
        train = torch.ones(len(y), dtype=torch.bool)
        train[held] = False
        x_train, y_train, x_held = x[train], y[train], x[held]
        del x   # a resized copy of the images is not kept through training
        if int(y_train.sum()) < 2:
            raise InvalidInputError(f"fit needs at least 2 normal training images, got "
                                    f"{int(y_train.sum())}; add normal images or lower "
                                    f"validation_fraction")
        opts = options or RunOptions(device=resolve_device(cfg.device),
                                     progress=auto_progress(progress), log=log)
        if checkpoint_dir is not None:
            opts.checkpoint_dir = Path(checkpoint_dir)
        fingerprint = run_fingerprint(cfg, x_train, y_train)
        self.model = AnoMemModel(cfg).to(opts.device)
        x1, y1 = ((x_train, y_train) if cfg.contrast_anomalies
                  else (x_train[y_train == 1], y_train[y_train == 1]))
        self.history_ = {"stage1": self._stage1(x1, y1, fingerprint, opts)}
        del x1, y1
        normals = x_train[y_train == 1]
        if cfg.prototypes == "kmeans":
            fit_kmeans_prototypes(self.model, normals, opts)
        if bool((y_train == 0).any()):
            self.history_["stage2"] = fit_heads(self.model, x_train, y_train, fingerprint, opts,
                                                normals)
        elif cfg.calibrate:
            calibrate_scales(self.model, normals, opts)
        ref = x_held if len(held) else normals
        self._set_threshold(self._scores(ref), len(held), validation_fraction)
        return self

    def _set_threshold(self, scores: np.ndarray, n_held: int, fraction: float) -> None:
        """threshold_ from ``n_held`` held-out normal scores (or training ones when 0)."""
        target = self.config.target_frr
        self.threshold_ = order_statistic_threshold(scores, target)
        self.threshold_normals_ = n_held
        self.threshold_frr_bound_ = frr_upper_bound(n_held, target) if n_held else None
        if n_held and too_few(n_held, target):
            warnings.warn(held_out_warning(n_held, target), ThresholdWarning, stacklevel=3)
        elif not n_held and fraction > 0:
            need = 1 / fraction            # inf for a subnormal fraction
            need_text = f"{math.ceil(need)}" if math.isfinite(need) else "more"
            warnings.warn(f"validation_fraction={fraction:g} holds out no normal image (it needs at "
                          f"least {need_text} normal images): the threshold comes "
                          f"from the training normals, whose scores are optimistic, so it flags "
                          f"more than target_frr of new normal images; add normal images",
                          ThresholdWarning, stacklevel=3)

    def _stage1(self, x: torch.Tensor, y: torch.Tensor, fingerprint: dict[str, Any],
                opts: RunOptions) -> list[dict[str, float]]:
        """Stage 1 on the training images (:mod:`anomem.distributed` shards it across ranks)."""
        return train_stage1(self._require_model(), x, y, fingerprint, opts)

    def _holdout(self, y: torch.Tensor, fraction: float) -> torch.Tensor:
        normal_idx = torch.nonzero(y == 1).squeeze(1)
        k = holdout_count(len(normal_idx), fraction)
        g = torch.Generator().manual_seed(self.config.seed + 1)
        return normal_idx[torch.randperm(len(normal_idx), generator=g)[:k]]

    # ------------------------------------------------------------------ scoring
    def _require_model(self) -> AnoMemModel:
        if self.model is None:
            raise RequiresFitting("this AnoMem detector is not fitted yet; call fit(images) or "
                                  "AnoMem.load(path) first")
        return self.model

    def _device(self) -> torch.device:
        return next(self._require_model().parameters()).device

    def _scores(self, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        opts = RunOptions(device=self._device())
        out = map_batches(self._require_model(), x, opts, lambda m, b: m(b).cpu(), batch_size)
        return torch.cat(out).numpy().astype(np.float64)

    def decision_function(self, images: Any, batch_size: int = 256) -> np.ndarray:
        """Anomaly score of each image (higher = more anomalous), shape (N,)."""
        model = self._require_model()
        return self._scores(to_image_tensor(images, model.config.image_size, "images"), batch_size)

    def scale_scores(self, images: Any, batch_size: int = 256) -> np.ndarray:
        """Per-scale scores before fusion, shape (N, S) (Eq. 9 or Eq. 10); with ``score_views``,
        S is the scales of every view, view after view."""
        model = self._require_model()
        x = to_image_tensor(images, model.config.image_size, "images")
        out = map_batches(model, x, RunOptions(device=self._device()),
                          lambda m, b: m.scale_scores(b).cpu(), batch_size)
        return torch.cat(out).numpy().astype(np.float64)

    def deviation_maps(self, images: Any, batch_size: int = 256) -> list[np.ndarray]:
        """Delta(s) (Eq. 8) of each image at each memory scale (and ``score_views`` view, flipped
        back onto the image): S arrays (N, C, H, W)."""
        model = self._require_model()
        x = to_image_tensor(images, model.config.image_size, "images")
        out = map_batches(model, x, RunOptions(device=self._device()),
                          lambda m, b: [d.cpu() for d in m.deviation_maps(b)], batch_size)
        return [torch.cat([o[s] for o in out]).numpy() for s in range(len(model.dims))]

    def anomaly_map(self, images: Any, sigma: float = 4.0, batch_size: int = 64) -> np.ndarray:
        """Per-pixel anomaly heatmap (N, S, S) at the model's input side S, float32.

        The per-position deviations of every memory scale, upsampled and fused
        with alpha(s), then smoothed by a gaussian of ``sigma`` pixels (see
        :func:`anomem.localisation.anomaly_map`); one-class and semi-supervised.
        """
        model = self._require_model()
        x = to_image_tensor(images, model.config.image_size, "images")
        out = map_batches(model, x, RunOptions(device=self._device()),
                          lambda m, b: anomaly_map(m, b, sigma).cpu(), batch_size)
        return torch.cat(out).numpy().astype(np.float32)

    @property
    def network(self) -> AnoMemModel:
        """The fitted network (:class:`~anomem.torch_model.AnoMemModel`); RequiresFitting before fit."""
        return self._require_model()

    @property
    def semi_supervised(self) -> bool:
        return self._require_model().semi_supervised

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write the fitted detector to one versioned file (atomic, pickle-free to load)."""
        model = self._require_model()
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return atomic_torch_save({
            "format": MODEL_FORMAT, "version": MODEL_VERSION, "anomem_version": __version__,
            "config": to_dict(model.config), "semi_supervised": model.semi_supervised,
            "kmeans": self.config.prototypes == "kmeans", "threshold": self.threshold_,
            "threshold_frr_bound": self.threshold_frr_bound_,
            "threshold_normals": self.threshold_normals_, "state_dict": state}, path)

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> AnoMem:
        """Read a detector written by :meth:`save` (tensors and plain values only).

        ``device`` defaults to the saved configuration's, or to ``auto`` when that
        names CUDA and this machine has none (a GPU-trained model loads on a laptop).

        Raises:
            ModelFileError: missing, corrupt, unsafe, inconsistent or other-version file.
            ConfigError: ``device`` is not a device name.
            InvalidInputError: ``path`` is not a path, or ``device`` is not available.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidInputError(f"path must be a file path, got {type(path).__name__}")
        blob = safe_torch_load(path, "model file")
        if blob.get("format") != MODEL_FORMAT:
            raise ModelFileError(f"{str(path)!r} is not an anomem model file")
        if blob.get("version") != MODEL_VERSION:
            raise ModelFileError(
                f"model file {str(path)!r} has format version {blob.get('version')} (written by "
                f"anomem {blob.get('anomem_version')}); this anomem {__version__} reads version "
                f"{MODEL_VERSION}: install the matching anomem or re-fit the model")
        require_checksum(blob, "model file", path)
        try:
            # files from before a key existed were made without it: memories that never grew,
            # a stage 1 without pseudo-anomalies, one view, image-level scales weighed last,
            # uniform batches for the heads and the one-class score weighed as much as they are
            cfg = from_dict({"consolidate_factor": 1, "pseudo_anomalies": "none",
                             "score_views": "single", "image_alpha": "last", "head_sampling": "uniform",
                             "oc_evidence": None, **blob["config"]})
            (threshold, bound, normals), state = _threshold_fields(blob), blob["state_dict"]
            state = {"oc_weight": torch.ones(()), **state}   # heads and one-class weighed alike
            if not all(isinstance(blob[k], bool) for k in ("kmeans", "semi_supervised")):
                raise TypeError("kmeans / semi_supervised flags are not booleans")
            if not all(isinstance(t, torch.Tensor) and (not t.is_floating_point()
                                                        or bool(torch.isfinite(t).all()))
                       for t in state.values()):
                raise ValueError("the weights are not all finite tensors")
            if blob["kmeans"] != (cfg.prototypes == "kmeans"):
                raise ValueError("the kmeans flag contradicts the configuration's prototypes")
            with torch.device("meta"):   # nothing is allocated until the weights fit the config
                model = AnoMemModel.build(cfg, semi_supervised=blob["semi_supervised"])
            wanted = {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}
            if wanted != {k: (v.shape, v.dtype) for k, v in state.items()}:
                raise ValueError("the weights do not fit the network its configuration describes")
            model.load_state_dict(state, assign=True)
        except (KeyError, IndexError, AttributeError, RuntimeError, TypeError, ValueError) as e:
            reason = " ".join(str(e).split())[:300]
            raise ModelFileError(f"model file {str(path)!r} is inconsistent ({reason}); re-fit "
                                 f"and save the model again") from None
        if device is not None:
            cfg = cfg.replace(device=device)
        elif cfg.device.startswith("cuda") and not torch.cuda.is_available():
            cfg = cfg.replace(device="auto")
        det = cls(cfg)
        det.model = model.to(resolve_device(cfg.device)).eval()
        det.model.config = cfg
        det.threshold_, det.threshold_frr_bound_, det.threshold_normals_ = threshold, bound, normals
        return det
