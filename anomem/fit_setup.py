"""How :meth:`anomem.AnoMem.fit` sets a run up: the device, checks of its arguments, the
normal images it holds out for the threshold, and what a checkpoint must match to be resumed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomem.base import is_real
from anomem.config import AnoMemConfig, to_dotted
from anomem.data.convert import image_sizes, to_defect_masks, to_image_tensor, to_normal_flags
from anomem.errors import InvalidInputError
from anomem.stages.common import RunOptions
from anomem.threshold import fit_threshold, order_statistic_threshold


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


def check_fit_options(checkpoint_dir: Any, log: Any, options: Any) -> None:
    """The types of :meth:`anomem.AnoMem.fit`'s ``checkpoint_dir``, ``log`` and ``options``."""
    if checkpoint_dir is not None and not isinstance(checkpoint_dir, (str, os.PathLike)):
        raise InvalidInputError(f"checkpoint_dir must be a folder path, got "
                                f"{type(checkpoint_dir).__name__}")
    if log is not None and not callable(log):
        raise InvalidInputError(f"log must be a function taking a dict of metrics, got "
                                f"{type(log).__name__}")
    if options is not None and not isinstance(options, RunOptions):
        raise InvalidInputError(f"options must be a RunOptions, got {type(options).__name__}")


def check_validation_fraction(fraction: Any) -> None:
    """:meth:`anomem.AnoMem.fit`'s ``validation_fraction``: a number in [0, 1)."""
    if not is_real(fraction) or not 0.0 <= fraction < 1.0:
        raise InvalidInputError(f"validation_fraction must be a number in [0, 1), got {fraction!r}")


def holdout_count(n_normal: int, fraction: float) -> int:
    """How many of ``n_normal`` normal images :meth:`anomem.AnoMem.fit` holds out for the threshold."""
    return int(n_normal * fraction)


def holdout_indices(y: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Which images (y = 1: normal) :meth:`anomem.AnoMem.fit` holds out: a seeded draw of the normals."""
    normal_idx = torch.nonzero(y == 1).squeeze(1)
    k = holdout_count(len(normal_idx), fraction)
    g = torch.Generator().manual_seed(seed + 1)
    return normal_idx[torch.randperm(len(normal_idx), generator=g)[:k]]


def fit_split(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The images a fit trains on (a bool mask) and the normals it holds out (indices,
    :func:`holdout_indices`).

    Raises:
        InvalidInputError: fewer than 2 normal images are left to train on.
    """
    held = holdout_indices(y, fraction, seed)
    train = torch.ones(len(y), dtype=torch.bool)
    train[held] = False
    if int(y[train].sum()) < 2:
        raise InvalidInputError(f"fit needs at least 2 normal training images, got "
                                f"{int(y[train].sum())}; add normal images or lower "
                                f"validation_fraction")
    return train, held


def rejoin(x_train: torch.Tensor, x_held: torch.Tensor, train: torch.Tensor,
           held: torch.Tensor) -> torch.Tensor:
    """The images of a fit in the order given, from its training and held-out parts
    (:func:`fit_split`), so that neither a copy of all images nor of the parts is kept
    while it trains."""
    x = torch.empty((len(train), *x_train.shape[1:]), dtype=x_train.dtype)
    x[train], x[held] = x_train, x_held
    return x


def threshold_reference(y: torch.Tensor, train: torch.Tensor, held: torch.Tensor) -> torch.Tensor:
    """The images whose scores set a fit's thresholds: the held-out normals, or the training
    normals when none is held out."""
    return held if len(held) else torch.nonzero(train & (y == 1)).squeeze(1)


def run_options(cfg: AnoMemConfig, checkpoint_dir: Any, progress: bool, log: Any,
                options: RunOptions | None) -> RunOptions:
    """How a fit runs: ``options`` as given, else the configuration's device; with
    ``checkpoint_dir``, both stages checkpoint there."""
    opts = options or RunOptions(device=resolve_device(cfg.runtime.device), progress=progress, log=log)
    if checkpoint_dir is not None:
        opts.checkpoint_dir = Path(checkpoint_dir)
    return opts


@dataclass
class FitData:
    """The images of one fit at the model's side, split as :func:`fit_split` splits them."""

    config: AnoMemConfig
    y: torch.Tensor          # 1 = normal, 0 = labelled anomaly, every image in the order given
    train: torch.Tensor      # bool mask of the images it trains on
    held: torch.Tensor       # indices of the normals held out for the thresholds
    x_train: torch.Tensor
    x_held: torch.Tensor
    options: RunOptions

    def images(self) -> torch.Tensor:
        """Every image in the order given (:func:`rejoin`); the parts are released."""
        x = rejoin(self.x_train, self.x_held, self.train, self.held)
        self.x_train = self.x_held = x[:0]
        return x


def prepare_fit(cfg: AnoMemConfig, images: Any, labels: Any, fraction: Any, checkpoint_dir: Any,
                progress: bool, log: Any, options: RunOptions | None) -> FitData:
    """A fit's arguments checked and its images converted and split (a resized copy of all the
    images is not kept beside the parts).

    Raises:
        InvalidInputError: bad images, labels, fraction or options; too few normal images.
    """
    x = to_image_tensor(images, cfg.backbone.image_size, "images")
    y = to_normal_flags(labels, len(x), "labels")
    check_validation_fraction(fraction)
    check_fit_options(checkpoint_dir, log, options)
    train, held = fit_split(y, fraction, cfg.runtime.seed)
    opts = run_options(cfg, checkpoint_dir, progress, log, options)
    return FitData(cfg, y, train, held, x[train], x[held], opts)


def masked_defects(masks: Any, images: Any, data: FitData) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The labelled anomalies of a fit that have a defect mask (:func:`to_defect_masks`), as
    uint8 images (K, 3, S, S) and bool masks (K, S, S), for the position head
    (:mod:`anomem.stages.position_head`); None without ``masks``.  Call it before
    :meth:`FitData.images`.

    Raises:
        InvalidInputError: bad masks; a mask with defect pixels on an image labelled normal;
            masks for a configuration without a position head.
    """
    if masks is None:
        return None
    if data.config.scoring.heatmap_reader == "memory":
        raise InvalidInputError("masks are read by the position head only; fit with "
                                "scoring.heatmap_reader=head or tuned, or leave masks out")
    px, has = to_defect_masks(masks, image_sizes(images), data.config.backbone.image_size)
    wrong = torch.nonzero(has & (data.y == 1)).flatten()
    if len(wrong):
        raise InvalidInputError(f"masks[{int(wrong[0])}] marks defect pixels on an image labelled "
                                f"normal; label it 1 (anomaly) or give it no mask (None)")
    pick = has & (data.y == 0)          # labelled anomalies are never held out
    return data.x_train[(torch.cumsum(data.train.long(), 0) - 1)[pick]], px[pick]


def fit_thresholds(scores: np.ndarray, maps: Callable[[torch.Tensor], np.ndarray], x: torch.Tensor,
                   data: FitData, fraction: float) -> tuple[float, float | None, int, float]:
    """The image threshold, its bound, the held-out count and the pixel threshold of a fit, from
    the ``scores`` of every image ``x`` and the ``maps`` function (model-side heatmaps at the
    default smoothing): :func:`anomem.threshold.fit_threshold` and the same order statistic
    over the maps' pixels, both on :func:`threshold_reference`'s images."""
    ref = threshold_reference(data.y, data.train, data.held)
    target = data.config.scoring.target_frr
    threshold, bound = fit_threshold(scores[ref.numpy()], len(data.held), fraction, target, stacklevel=4)
    return threshold, bound, len(data.held), order_statistic_threshold(maps(x[ref]), target)


def data_digest(images: torch.Tensor, y: torch.Tensor) -> str:
    """A short hash of a training set, so a checkpoint is only resumed on the same data."""
    h = hashlib.blake2b(digest_size=16)
    for t in (images, y):   # the tensors' own bytes, without a copy of the training set
        h.update(np.ascontiguousarray(t.numpy()).reshape(-1).view(np.uint8))
    return h.hexdigest()


#: Keys that say where and how fast a run goes, never what it computes: a checkpoint
#: resumes across them (a run started on one device finishes on another).
RUNTIME_KEYS = ("runtime.device", "runtime.amp", "runtime.channels_last",
                "runtime.malloc_mmap_threshold")


def run_fingerprint(cfg: AnoMemConfig, images: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the computing configuration and the data."""
    config = {k: v for k, v in to_dotted(cfg).items() if k not in RUNTIME_KEYS}
    return {"config": config, "data": data_digest(images, y)}
