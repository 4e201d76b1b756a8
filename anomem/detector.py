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
    >>> det.decision_function(X[:5]).shape
    (5,)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomem.base import MapDetector
from anomem.config import AnoMemConfig, get_config
from anomem.data.convert import to_image_tensor
from anomem.errors import InvalidInputError, RequiresFitting
from anomem.fit_setup import (
    RUNTIME_KEYS,
    data_digest,
    fit_thresholds,
    holdout_count,
    holdout_indices,
    masked_defects,
    prepare_fit,
    resolve_device,
    run_fingerprint,
)
from anomem.heatmaps import at_input_size, fit_map_calibration, model_side_maps
from anomem.model_file import MODEL_FORMAT, MODEL_VERSION, ModelFile, model_blob, read_model_file
from anomem.presets import AUTO, auto_preset, input_side
from anomem.progress import auto_progress
from anomem.serialization import atomic_torch_save
from anomem.stages.common import RunOptions, map_batches
from anomem.stages.position_head import train_position_head
from anomem.stages.stage1 import train_stage1
from anomem.stages.stage2 import calibrate_scales, fit_heads, fit_kmeans_prototypes
from anomem.torch_model import AnoMemModel

__all__ = ["MODEL_FORMAT", "MODEL_VERSION", "RUNTIME_KEYS", "AnoMem", "ConfigArgs", "data_digest",
           "holdout_count", "holdout_indices", "resolve_config", "resolve_device", "run_fingerprint",
           "score_network"]


def resolve_config(config: AnoMemConfig | str | Path, overrides: dict[str, Any],
                   images: Any = None) -> AnoMemConfig:
    """The configuration :meth:`AnoMem.fit` trains with, from the constructor's arguments.

    ``auto`` picks the preset from the side of ``images`` (:func:`anomem.presets.auto_preset`);
    without images (a check of the arguments alone) it stands for ``cpu``.

    Raises:
        ConfigError: not a preset, YAML path or config; an unknown key or a bad value.
        InvalidInputError: ``auto`` cannot read the side of ``images``.
    """
    if isinstance(config, AnoMemConfig):
        return config.replace(**overrides) if overrides else config
    if isinstance(config, str) and config == AUTO:
        return get_config("cpu" if images is None else auto_preset(input_side(images)), overrides)
    return get_config(config, overrides)


def score_network(model: AnoMemModel, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Fused anomaly scores of uint8 images (N, 3, S, S), float64 (N,)."""
    opts = RunOptions(device=next(model.parameters()).device)
    out = map_batches(model, x, opts, lambda m, b: m(b).cpu(), batch_size)
    return torch.cat(out).numpy().astype(np.float64)


class ConfigArgs:
    """Constructor arguments kept as given, scikit-learn style: ``config``, the names of
    :attr:`_own_params`, and configuration keys (``**overrides``) checked at once."""

    #: constructor arguments besides ``config`` and the configuration keys
    _own_params: tuple[str, ...] = ()

    def __init__(self, config: AnoMemConfig | str | Path = AUTO, **overrides: Any) -> None:
        self._check_args(config, {}, overrides)   # a bad key or value is refused here already
        self.config, self._overrides = config, overrides

    def _check_args(self, config: Any, own: dict[str, Any], overrides: dict[str, Any]) -> None:
        """Refuse arguments that make no valid configuration (:class:`~anomem.errors.ConfigError`)."""
        resolve_config(config, overrides)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's arguments: ``{"config": ..., **overrides}`` (the objects themselves)."""
        return {"config": self.config, **{k: getattr(self, k) for k in self._own_params},
                **self._overrides}

    def set_params(self, **params: Any) -> Any:
        """Change constructor arguments (``config`` or configuration keys); returns self.

        Raises:
            ConfigError: the new arguments do not make a valid configuration (nothing changes).
        """
        config = params.pop("config", self.config)
        own = {k: params.pop(k, getattr(self, k)) for k in self._own_params}
        overrides = {**self._overrides, **params}
        self._check_args(config, own, overrides)
        self.config, self._overrides = config, overrides
        for k, v in own.items():
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        args = ([repr(self.config)] + [f"{k}={getattr(self, k)!r}" for k in self._own_params]
                + [f"{k}={v!r}" for k, v in self._overrides.items()])
        return f"{type(self).__name__}({', '.join(args)})"


class AnoMem(ConfigArgs, MapDetector):
    """Multi-scale contrasted-memory anomaly detector (one-class or semi-supervised).

    A scikit-learn style estimator: the constructor only stores its arguments
    (:meth:`get_params`, :meth:`set_params`, ``sklearn.base.clone`` work), and
    everything :meth:`fit` or :meth:`load` computes ends with ``_``.

    Args:
        config: a preset name, a YAML path or an :class:`~anomem.config.AnoMemConfig`.
            The presets (:data:`anomem.presets.PRESET_GUIDE`):

            * ``auto`` (default): ``digits``, ``cpu`` or ``mtd`` by the side of the
              training images before resizing (<= 24 px, <= 64 px, larger), chosen
              in :meth:`fit` (:func:`anomem.presets.auto_preset`) and kept in
              :attr:`config_`;
            * ``digits``: tiny images (8-24 px), ResNet-18 width 8 at 16x16;
            * ``cpu``: small images (25-64 px, e.g. CIFAR-10), ResNet-18 width 16 at 32x32;
            * ``mtd``: larger images and localisation (> 64 px), ResNet-18 width 16 at
              128x128 with an ImageNet stem, 96 epochs of stage 1 on pasted defects;
            * ``paper``: the paper read literally, for a GPU: ResNet-50 width 64 at
              32x32, batch 1024, 200 epochs;
            * ``gpu``: the paper's network and budget with the tuned recipe (beta 20),
              for a GPU.
        **overrides: configuration keys to change, e.g. ``stage1.epochs=5`` (with
            ``auto``, on top of the chosen preset).  They are checked at once
            (:class:`~anomem.errors.ConfigError`), and again by :meth:`fit`.

    Attributes:
        config: the constructor's ``config``, as given (never changed by :meth:`fit`).
        config_: the configuration the fit used (with ``auto``: the chosen preset's,
            with the overrides); after :meth:`load`, the file's.
        network_: the fitted :class:`~anomem.torch_model.AnoMemModel` (also :attr:`network`).
        threshold_: score above which :meth:`predict` calls an image an anomaly.
        threshold_frr_bound_: upper 95 % confidence bound on the share of new normal
            images that threshold_ flags (:mod:`anomem.threshold`); None when the
            threshold does not come from held-out normals.
        threshold_normals_: how many held-out normal images set threshold_ (0: the
            training normals did, and no bound holds).
        pixel_threshold_: heatmap value above which :meth:`predict_mask` calls a pixel
            anomalous: the same order statistic as threshold_, over every pixel of the
            maps of the same normal images (:func:`anomem.fit_setup.fit_thresholds`).
            None after loading a model file written before it existed.
        decision_scores_: float64 (N,) scores of every image given to :meth:`fit`, in
            their order, by the fitted network (as :meth:`decision_function` gives them):
            training images, labelled anomalies and the normals held out for the
            threshold alike.  Not stored in model files: :meth:`load` does not set it.
        history_: per-epoch training statistics of both stages.
    """

    # ------------------------------------------------------------------ fitting
    def fit(self, images: Any, labels: Any = None, *, masks: Any = None,
            validation_fraction: float = 0.2, checkpoint_dir: str | Path | None = None,
            progress: bool | None = None, log: Any = None,
            options: RunOptions | None = None) -> AnoMem:
        """Train both stages on ``images`` (labels: 1 = anomaly, 0 = normal, or None).

        ``validation_fraction`` (default 0.2, as ``anomem fit``) of the normal
        images is held out of training and sets :attr:`threshold_`: the
        order statistic of their scores whose expected false-alarm rate is at
        most ``scoring.target_frr`` (:mod:`anomem.threshold`; a ``ThresholdWarning`` says
        when they are too few for that).  0 trains on every image and sets the
        threshold on the training normals, without a bound.  The same images set
        :attr:`pixel_threshold_` (one more pass over them for their heatmaps).  ``progress``:
        progress bars; None shows them on a terminal or in a notebook, not
        in redirected output.  With ``checkpoint_dir``, both stages
        checkpoint there and a rerun resumes where it stopped.  Sets
        :attr:`config_`, :attr:`network_`, the threshold attributes (image and pixel),
        :attr:`decision_scores_` and :attr:`history_`.

        ``masks`` (only with ``scoring.heatmap_reader="head"`` or ``"tuned"``): one entry per image, None or
        the defect pixels of a labelled anomaly at the image's own size
        (:func:`anomem.data.convert.to_defect_masks`); the position head trains on those
        defects beside its pasted ones (:mod:`anomem.stages.position_head`).
        """
        cfg = resolve_config(self.config, self._overrides, images)
        data = prepare_fit(cfg, images, labels, validation_fraction, checkpoint_dir,
                           auto_progress(progress), log, options)
        defects = masked_defects(masks, images, data)
        self.fit_network(cfg, data.x_train, data.y[data.train], data.options, defects)
        x = data.images()
        # scored once, in the order given; the thresholds read the held-out normals' scores
        # (or, with none held out, the training normals')
        self.decision_scores_ = score_network(self.network_, x)
        (self.threshold_, self.threshold_frr_bound_, self.threshold_normals_,
         self.pixel_threshold_) = fit_thresholds(self.decision_scores_,
                                                 lambda xr: fit_map_calibration(self.network_, xr),
                                                 x, data, validation_fraction)
        return self

    def fit_network(self, cfg: AnoMemConfig, x_train: torch.Tensor, y_train: torch.Tensor,
                    opts: RunOptions,
                    defects: tuple[torch.Tensor, torch.Tensor] | None = None) -> AnoMem:
        """Train the network of ``cfg`` on uint8 images (N, 3, S, S) (``y_train``: 1 = normal;
        ``defects``: masked anomalies for the position head, :func:`masked_defects`) and set
        :attr:`config_`, :attr:`network_` and :attr:`history_`, without thresholds (:meth:`fit`
        without its hold-out; :class:`anomem.ensemble.AnoMemEnsemble` fits its members so)."""
        torch.manual_seed(cfg.runtime.seed)
        self.config_ = cfg
        self.network_ = AnoMemModel(cfg, semi_supervised=bool((y_train == 0).any())).to(opts.device)
        self._train(x_train, y_train, opts, defects)
        return self

    def _train(self, x_train: torch.Tensor, y_train: torch.Tensor, opts: RunOptions,
               defects: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Stage 1, then the prototypes, heads or calibration of stage 2, then the position head."""
        cfg, model = self.config_, self.network_
        fingerprint = run_fingerprint(cfg, x_train, y_train)
        x1, y1 = ((x_train, y_train) if cfg.extensions.contrast_anomalies
                  else (x_train[y_train == 1], y_train[y_train == 1]))
        self.history_ = {"stage1": self._stage1(x1, y1, fingerprint, opts)}
        del x1, y1
        normals = x_train[y_train == 1]
        if cfg.memory.prototypes == "kmeans":
            fit_kmeans_prototypes(model, normals, opts)
        if model.semi_supervised:
            self.history_["stage2"] = fit_heads(model, x_train, y_train, fingerprint, opts, normals)
        elif cfg.scoring.calibrate:
            calibrate_scales(model, normals, opts)
        if model.position_head is not None:
            self.history_["position_head"] = train_position_head(model, normals, opts, defects)

    def _holdout(self, y: torch.Tensor, fraction: float) -> torch.Tensor:
        """The normals the last fit held out (:func:`holdout_indices` with its seed)."""
        return holdout_indices(y, fraction, self.config_.runtime.seed)

    def _stage1(self, x: torch.Tensor, y: torch.Tensor, fingerprint: dict[str, Any],
                opts: RunOptions) -> list[dict[str, float]]:
        """Stage 1 on the training images (:mod:`anomem.distributed` shards it across ranks)."""
        return train_stage1(self._require_model(), x, y, fingerprint, opts)

    # ------------------------------------------------------------------ scoring
    def _require_model(self) -> AnoMemModel:
        model = getattr(self, "network_", None)
        if model is None:
            raise RequiresFitting("this AnoMem detector is not fitted yet; call fit(images) or "
                                  "AnoMem.load(path) first")
        return model

    def _device(self) -> torch.device:
        return next(self._require_model().parameters()).device

    def _scores(self, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        return score_network(self._require_model(), x, batch_size)

    def decision_function(self, images: Any, batch_size: int = 256) -> np.ndarray:
        """Anomaly score of each image (higher = more anomalous), shape (N,)."""
        model = self._require_model()
        return self._scores(to_image_tensor(images, model.config.backbone.image_size, "images"), batch_size)

    def scale_scores(self, images: Any, batch_size: int = 256) -> np.ndarray:
        """Per-scale scores before fusion, shape (N, S) (Eq. 9 or Eq. 10); with ``scoring.views``,
        S is the scales of every view, view after view."""
        model = self._require_model()
        x = to_image_tensor(images, model.config.backbone.image_size, "images")
        out = map_batches(model, x, RunOptions(device=self._device()),
                          lambda m, b: m.scale_scores(b).cpu(), batch_size)
        return torch.cat(out).numpy().astype(np.float64)

    def deviation_maps(self, images: Any, batch_size: int = 256) -> list[np.ndarray]:
        """Delta(s) (Eq. 8) of each image at each memory scale (and ``scoring.views`` view, flipped
        back onto the image): S arrays (N, C, H, W)."""
        model = self._require_model()
        x = to_image_tensor(images, model.config.backbone.image_size, "images")
        out = map_batches(model, x, RunOptions(device=self._device()),
                          lambda m, b: [d.cpu() for d in m.deviation_maps(b)], batch_size)
        return [torch.cat([o[s.index] for o in out]).numpy() for s in model.scales]

    def anomaly_map(self, images: Any, sigma: float | None = None,
                    batch_size: int = 64) -> np.ndarray | list[np.ndarray]:
        """Per-pixel anomaly heatmap of each image at its own height x width, float32.

        An array or tensor batch (N images of one size H x W) gives an (N, H, W)
        array; a list of images (sizes may differ) gives a list of (H, W) arrays.
        Computed at the model's side S: the per-position deviations of the finest
        memory scale (``scoring.heatmap_scales="all"``: of every map scale, fused with
        alpha(s)), upsampled, smoothed by a gaussian of ``sigma``
        pixels of S (None: S / 32, which :attr:`pixel_threshold_` is set with), then
        resized back to each image's size (:mod:`anomem.heatmaps`).

        Example:
            >>> maps = det.anomaly_map(np.zeros((2, 200, 150), np.uint8))   # doctest: +SKIP
            >>> maps.shape                                                   # doctest: +SKIP
            (2, 200, 150)
        """
        model = self._require_model()
        x = to_image_tensor(images, model.config.backbone.image_size, "images")
        return at_input_size(model_side_maps(model, x, sigma, batch_size), images)

    @property
    def network(self) -> AnoMemModel:
        """The fitted network, :attr:`network_` (read-only); RequiresFitting before fit."""
        return self._require_model()

    @property
    def semi_supervised(self) -> bool:
        """Whether the fitted network scores with heads trained on labelled anomalies."""
        return self._require_model().semi_supervised

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write the fitted detector to one versioned file (atomic, pickle-free to load)."""
        blob = model_blob(self._require_model(), self.threshold_, self.threshold_frr_bound_,
                          self.threshold_normals_, self.pixel_threshold_)
        return atomic_torch_save(blob, path)

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> AnoMem:
        """Read a detector written by :meth:`save` (tensors and plain values only).

        The detector's :attr:`config` and :attr:`config_` are the file's
        configuration.  ``device`` defaults to the saved configuration's, or to
        ``auto`` when that names CUDA and this machine has none (a GPU-trained
        model loads on a laptop).

        Raises:
            ModelFileError: missing, corrupt, unsafe, inconsistent or other-version file.
            ConfigError: ``device`` is not a device name.
            InvalidInputError: ``path`` is not a path, or ``device`` is not available.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidInputError(f"path must be a file path, got {type(path).__name__}")
        return cls.from_model_file(read_model_file(path), device)

    @classmethod
    def from_model_file(cls, found: ModelFile, device: str | None = None) -> AnoMem:
        """The detector of a checked model file (:func:`anomem.model_file.read_model_file`),
        on ``device`` as :meth:`load` chooses it."""
        cfg = found.config
        if device is not None:
            cfg = cfg.replace(device=device)
        elif cfg.runtime.device.startswith("cuda") and not torch.cuda.is_available():
            cfg = cfg.replace(device="auto")
        det = cls(cfg)
        det.config_ = cfg
        det.network_ = found.network.to(resolve_device(cfg.runtime.device)).eval()
        det.network_.config = cfg
        det.threshold_ = found.threshold
        det.threshold_frr_bound_ = found.threshold_frr_bound
        det.threshold_normals_ = found.threshold_normals
        det.pixel_threshold_ = found.pixel_threshold
        return det
