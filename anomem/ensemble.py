"""Several AnoMem fits on the same images, one vote: a detector that a refit reproduces.

On a small training set (a few hundred images), stage 1 takes few steps, and
which images its batches draw decides where the encoder ends: with the same 200
CIFAR-10 airplanes and one step an epoch, one-class AUROC ranged over 30 points
from seed to seed, and some fits went astray.  :class:`AnoMemEnsemble` fits
``members`` networks on the same training images (or, with ``subsample``, each
on its own draw of a share of them), each with its own seed (initialisation,
augmentation, batch order; :func:`member_seeds`), and outvotes the fits that go
astray:

* each member's image score is standardised by the mean and standard deviation
  of its scores on the training normals (every normal not held out, whether or
  not the member drew it; ``score_loc_``, ``score_scale_``), and
  the ensemble's score is the mean of the standardised scores (higher = more
  anomalous, as every anomem score);
* its heatmap is the mean of the members' maps at the model's side, each
  standardised by the mean and standard deviation of its pixels over (at most
  :data:`MAP_NORMALS` of) the training normals' maps at the default smoothing
  (``map_loc_``, ``map_scale_``);
* the threshold and the pixel threshold are set as :meth:`anomem.AnoMem.fit`
  sets them, on the ensemble's scores of held-out normals that no member
  trained on (``validation_fraction``), with the same guarantee.

It costs ``members`` fits.  Measured in ``docs/results.md`` ("small training sets: five
batches an epoch"): five members, each with stage 1's five batches an epoch
(``stage1.min_batches``), keep CIFAR-10 airplanes and cats, two digits and the tiles within
1.5 AUROC points from seed to seed.
``members="auto"`` (:func:`resolve_members`), the command line's default, fits five
for a one-class fit on a small set and one network otherwise.

Example:
    >>> from sklearn.datasets import load_digits
    >>> X, t = load_digits(return_X_y=True)
    >>> X = X.reshape(-1, 8, 8) / 16.0
    >>> ens = AnoMemEnsemble("digits", members=2, stage1_epochs=1).fit(X[t == 0][:60])
    >>> ens.decision_function(X[:5]).shape
    (5,)
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomem import __version__
from anomem.base import MapDetector
from anomem.config import AnoMemConfig
from anomem.data.convert import to_image_tensor
from anomem.detector import AnoMem, ConfigArgs, resolve_config, score_network
from anomem.errors import ConfigError, InvalidInputError, ModelFileError, RequiresFitting
from anomem.fit_setup import fit_thresholds, prepare_fit
from anomem.heatmaps import at_input_size, fit_map_calibration, model_side_maps
from anomem.model_file import (
    ENSEMBLE_FORMAT,
    ENSEMBLE_VERSION,
    EnsembleFile,
    model_blob,
    read_any_model_file,
)
from anomem.presets import AUTO
from anomem.progress import auto_progress
from anomem.serialization import atomic_torch_save
from anomem.stages.common import RunOptions

__all__ = ["AUTO_MEMBERS", "MAP_NORMALS", "SMALL_SET", "AnoMemEnsemble", "check_members",
           "check_subsample", "load_detector", "make_detector", "member_images", "member_seeds",
           "parse_members", "resolve_members"]

#: At most this many training normals (evenly spaced) set each member's map standardiser.
MAP_NORMALS = 256
#: ``members="auto"`` fits this many networks on a small training set, one on a larger one.
AUTO_MEMBERS = 5
#: A small training set for ``members="auto"``: at most this many images given to ``fit``.
SMALL_SET = 500


def member_seeds(seed: int, members: int) -> list[int]:
    """The members' seeds: ``members`` independent streams spawned from ``seed``
    (``numpy.random.SeedSequence``), each below 2**32, so ensembles of nearby seeds
    share no member.

    Example:
        >>> len(set(member_seeds(0, 5))), member_seeds(0, 2) == member_seeds(0, 3)[:2]
        (5, True)
    """
    return [int(c.generate_state(1)[0]) for c in np.random.SeedSequence(seed).spawn(members)]


def standardiser(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation (population) of ``values``; a zero deviation (constant
    scores) becomes 1, so the member's standardised values are merely centred."""
    v = np.asarray(values, dtype=np.float64).ravel()
    sd = float(v.std())
    return float(v.mean()), sd if sd > 0 else 1.0


def check_subsample(subsample: Any) -> None:
    """Refuse a share of the training normals outside (0, 1] (:class:`ConfigError`)."""
    if isinstance(subsample, bool) or not isinstance(subsample, (int, float)) or not 0 < subsample <= 1:
        raise ConfigError(f"subsample must be a share of the training normals in (0, 1], got {subsample!r}")


def member_images(y: torch.Tensor, subsample: float, seed: int) -> torch.Tensor:
    """The indices of the training images one member trains on, in order: every labelled
    anomaly (``y == 0``) and ``round(subsample * normals)`` of the normals (at least 2), drawn
    without replacement by ``seed``; every image when ``subsample`` is 1.

    Example:
        >>> y = torch.tensor([1, 1, 0, 1, 1])
        >>> member_images(y, 1.0, 0).tolist(), len(member_images(y, 0.5, 0))
        ([0, 1, 2, 3, 4], 3)
    """
    if subsample >= 1:
        return torch.arange(len(y))
    normals = torch.nonzero(y == 1).squeeze(1)
    keep = max(2, round(subsample * len(normals)))
    g = torch.Generator().manual_seed(seed)
    drawn = normals[torch.randperm(len(normals), generator=g)[:keep]]
    return torch.sort(torch.cat([drawn, torch.nonzero(y == 0).squeeze(1)])).values


def check_members(members: Any, name: str = "members") -> None:
    """Refuse a number of members that is neither a positive integer nor ``"auto"``
    (:class:`ConfigError` naming ``name``, the argument or option that gave it)."""
    if members == "auto":
        return
    if isinstance(members, bool) or not isinstance(members, (int, np.integer)) or members < 1:
        raise ConfigError(f"{name} must be a positive integer (the number of networks) or 'auto', "
                          f"got {members!r}")


def parse_members(text: str, name: str = "--members") -> int | str:
    """A command line's members value, checked: ``"auto"`` or a positive integer
    (:class:`ConfigError` naming ``name`` otherwise).

    Example:
        >>> parse_members("auto"), parse_members("3")
        ('auto', 3)
    """
    try:
        members = text if text == "auto" else int(text)
    except ValueError:
        members = text
    check_members(members, name)
    return members


def resolve_members(members: int | str, n_images: int, recipe: str = "tuned",
                    semi_supervised: bool = False) -> int:
    """How many networks ``members`` asks for on ``n_images`` training images: the number
    itself, or for ``"auto"`` :data:`AUTO_MEMBERS` for a one-class fit on a small set (at most
    :data:`SMALL_SET` images, where a fit takes few steps and its seed moves AUROC by points),
    else 1: on a larger set, under the ``paper`` recipe (the paper fits one network) and for a
    semi-supervised fit (labelled anomalies), where the ensemble has not been validated on two
    image sets yet.

    The cut is one of cost, not of quality: five fits on 500 images cost about what one fit
    on 2,500 costs; on larger sets an ensemble is the user's choice (``members=5``).

    Example:
        >>> resolve_members("auto", 120), resolve_members("auto", 5000), resolve_members(3, 10)
        (5, 1, 3)
        >>> resolve_members("auto", 120, recipe="paper"), resolve_members("auto", 120, semi_supervised=True)
        (1, 1)
    """
    check_members(members)
    if members == "auto":
        small = n_images <= SMALL_SET and recipe != "paper" and not semi_supervised
        return AUTO_MEMBERS if small else 1
    return int(members)


def make_detector(config: AnoMemConfig | str | Path, members: int | str, n_images: int,
                  semi_supervised: bool = False, **overrides: Any) -> AnoMem | AnoMemEnsemble:
    """The detector that ``members`` asks for on ``n_images`` training images, labelled
    anomalies among them when ``semi_supervised`` (:func:`resolve_members`):
    :class:`anomem.AnoMem` for one network, else an :class:`AnoMemEnsemble` of that many (what
    ``anomem fit`` and ``anomem demo`` fit).

    Example:
        >>> [type(make_detector("digits", k, 120)).__name__ for k in ("auto", 1)]
        ['AnoMemEnsemble', 'AnoMem']
    """
    k = resolve_members(members, n_images, resolve_config(config, overrides).recipe, semi_supervised)
    return AnoMem(config, **overrides) if k == 1 else AnoMemEnsemble(config, members=k, **overrides)


class AnoMemEnsemble(ConfigArgs, MapDetector):
    """``members`` AnoMem fits on the same images, scored together (see the module's text).

    Args:
        config: as :class:`anomem.AnoMem`'s (a preset name, a YAML path or a configuration).
        members: how many networks to fit (default 5); 1 is one fit, scored as AnoMem scores
            it up to a fixed affine map; ``"auto"`` decides at :meth:`fit` by the number of
            images (:func:`resolve_members`).
        subsample: the share of the training normals each member trains on, its own draw
            (:func:`member_images`); 1 (default): every member on every training image.
        **overrides: configuration keys, as :class:`anomem.AnoMem`'s; ``runtime.seed`` seeds
            the hold-out draw and :func:`member_seeds`.

    Attributes:
        config_: the configuration of the fit (the members' differ from it by their seed).
        members_: the fitted :class:`anomem.AnoMem` members (no thresholds of their own).
        score_loc_, score_scale_, map_loc_, map_scale_: float64 (members,) standardisers.
        threshold_, threshold_frr_bound_, threshold_normals_, pixel_threshold_: as AnoMem's.
        decision_scores_: the ensemble's scores of every image given to :meth:`fit`, in order.
    """

    _own_params = ("members", "subsample")

    def __init__(self, config: AnoMemConfig | str | Path = AUTO, members: int | str = 5,
                 subsample: float = 1.0, **overrides: Any) -> None:
        self._check_args(config, {"members": members, "subsample": subsample}, overrides)
        self.config, self.members, self.subsample, self._overrides = config, members, subsample, overrides

    def _check_args(self, config: Any, own: dict[str, Any], overrides: dict[str, Any]) -> None:
        check_members(own["members"])
        check_subsample(own["subsample"])
        resolve_config(config, overrides)

    # ------------------------------------------------------------------ fitting
    def fit(self, images: Any, labels: Any = None, *, validation_fraction: float = 0.2,
            checkpoint_dir: str | Path | None = None, progress: bool | None = None,
            log: Any = None) -> AnoMemEnsemble:
        """Fit the members on the training images, then the standardisers and thresholds.

        Arguments as :meth:`anomem.AnoMem.fit`'s.  The members train one after the other;
        with ``checkpoint_dir``, member k checkpoints in its folder ``member<k>`` and a rerun
        resumes where it stopped.  ``log`` receives each member's rows with ``member``: k.
        """
        cfg = resolve_config(self.config, self._overrides, images)
        check_members(self.members)
        data = prepare_fit(cfg, images, labels, validation_fraction, checkpoint_dir,
                           auto_progress(progress), log, None)
        y_train = data.y[data.train]
        self.config_, self.members_ = cfg, []
        count = resolve_members(self.members, len(data.y), cfg.recipe, bool((data.y == 0).any()))
        for k, seed in enumerate(member_seeds(cfg.runtime.seed, count)):
            member_cfg = cfg.replace(**{"runtime.seed": seed})
            own = member_images(y_train, self.subsample, seed)
            self.members_.append(AnoMem(member_cfg).fit_network(
                member_cfg, data.x_train[own], y_train[own], _member_options(data.options, k)))
        x = data.images()
        raw = np.stack([score_network(m.network_, x) for m in self.members_])
        normals = (data.train & (data.y == 1)).numpy()
        self._fit_standardisers(raw[:, normals], x[normals])
        self.decision_scores_ = self._standardised(raw).mean(axis=0)
        (self.threshold_, self.threshold_frr_bound_, self.threshold_normals_,
         self.pixel_threshold_) = fit_thresholds(self.decision_scores_, self._model_side_maps, x,
                                                 data, validation_fraction)
        return self

    def _fit_standardisers(self, raw: np.ndarray, normals: torch.Tensor) -> None:
        """Each member's score and map standardisers on the training normals, from the members'
        ``raw`` scores of them, shape (members, N), and the images themselves (the same images
        set each member's pixel-by-pixel standardisation, :func:`fit_map_calibration`)."""
        some = normals[np.unique(np.linspace(0, len(normals) - 1, MAP_NORMALS).round().astype(int))]
        score = [standardiser(r) for r in raw]
        maps = [standardiser(fit_map_calibration(m.network_, some)) for m in self.members_]
        self.score_loc_, self.score_scale_ = (np.array(v) for v in zip(*score, strict=True))
        self.map_loc_, self.map_scale_ = (np.array(v) for v in zip(*maps, strict=True))

    # ------------------------------------------------------------------ scoring
    def _require_model(self) -> list[AnoMem]:
        members = getattr(self, "members_", None)
        if members is None:
            raise RequiresFitting("this AnoMemEnsemble is not fitted yet; call fit(images) or "
                                  "AnoMemEnsemble.load(path) first")
        return members

    def _standardised(self, raw: np.ndarray) -> np.ndarray:
        """Each member's standardised scores from its raw scores, both shape (members, N)."""
        return (raw - self.score_loc_[:, None]) / self.score_scale_[:, None]

    def _model_side_maps(self, x: torch.Tensor, sigma: float | None = None,
                         batch_size: int = 64) -> np.ndarray:
        members = self._require_model()
        total = np.zeros((len(x), x.shape[-2], x.shape[-1]), np.float32)
        for m, loc, sd in zip(members, self.map_loc_, self.map_scale_, strict=True):
            total += (model_side_maps(m.network_, x, sigma, batch_size) - np.float32(loc)) / np.float32(sd)
        return total / len(members)

    def _images(self, images: Any) -> torch.Tensor:
        return to_image_tensor(images, self._require_model()[0].config_.backbone.image_size, "images")

    def member_scores(self, images: Any, batch_size: int = 256) -> np.ndarray:
        """Each member's standardised anomaly score of each image, shape (members, N): how far
        the members agree; their mean over members is :meth:`decision_function`."""
        x = self._images(images)
        return self._standardised(np.stack([score_network(m.network_, x, batch_size)
                                            for m in self._require_model()]))

    def decision_function(self, images: Any, batch_size: int = 256) -> np.ndarray:
        """Anomaly score of each image (higher = more anomalous), shape (N,): the mean of the
        members' standardised scores (:meth:`member_scores`)."""
        return self.member_scores(images, batch_size).mean(axis=0)

    def anomaly_map(self, images: Any, sigma: float | None = None,
                    batch_size: int = 64) -> np.ndarray | list[np.ndarray]:
        """Per-pixel heatmap of each image at its own size, as :meth:`anomem.AnoMem.anomaly_map`
        gives it, from the mean of the members' standardised maps (standardised at the default
        smoothing, whatever ``sigma``)."""
        return at_input_size(self._model_side_maps(self._images(images), sigma, batch_size), images)

    @property
    def semi_supervised(self) -> bool:
        """Whether the members score with heads trained on labelled anomalies."""
        return self._require_model()[0].semi_supervised

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write the fitted ensemble to one versioned file (atomic, pickle-free to load)."""
        members = self._require_model()
        blob = {"format": ENSEMBLE_FORMAT, "version": ENSEMBLE_VERSION, "anomem_version": __version__,
                "seed": self.config_.runtime.seed, "subsample": float(self.subsample),
                "members": [model_blob(m.network_) for m in members],
                "score_loc": self.score_loc_.tolist(), "score_scale": self.score_scale_.tolist(),
                "map_loc": self.map_loc_.tolist(), "map_scale": self.map_scale_.tolist(),
                "threshold": self.threshold_, "threshold_frr_bound": self.threshold_frr_bound_,
                "threshold_normals": self.threshold_normals_, "pixel_threshold": self.pixel_threshold_}
        return atomic_torch_save(blob, path)

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> AnoMemEnsemble:
        """Read an ensemble written by :meth:`save`; ``device`` as :meth:`anomem.AnoMem.load`'s.

        Raises:
            ModelFileError: missing, corrupt, unsafe, inconsistent or other-version file, or
                the file of a single model (load it with :meth:`anomem.AnoMem.load`).
        """
        found = _read(path)
        if not isinstance(found, EnsembleFile):
            raise ModelFileError(f"{str(path)!r} holds one model, not an ensemble; load it with "
                                 f"AnoMem.load or anomem.load_detector")
        return cls.from_file(found, device)

    @classmethod
    def from_file(cls, found: EnsembleFile, device: str | None = None) -> AnoMemEnsemble:
        """The ensemble of a checked ensemble file (:func:`anomem.model_file.read_any_model_file`)."""
        members = [AnoMem.from_model_file(m, device) for m in found.members]
        cfg = members[0].config_.replace(**{"runtime.seed": found.seed})
        ens = cls(cfg, members=len(members), subsample=found.subsample)
        ens.config_, ens.members_ = cfg, members
        for k, v in found.stats.items():
            setattr(ens, f"{k}_", v)
        ens.threshold_, ens.threshold_frr_bound_ = found.threshold, found.threshold_frr_bound
        ens.threshold_normals_, ens.pixel_threshold_ = found.threshold_normals, found.pixel_threshold
        return ens


def _member_options(opts: RunOptions, k: int) -> RunOptions:
    """Member k's run options: its own checkpoint folder, its rows of the log marked with k."""
    log = opts.log
    return dataclasses.replace(
        opts, checkpoint_dir=None if opts.checkpoint_dir is None else opts.checkpoint_dir / f"member{k}",
        log=None if log is None else (lambda row: log({"member": k, **row})))


def _read(path: Any) -> Any:
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInputError(f"path must be a file path, got {type(path).__name__}")
    return read_any_model_file(path)


def load_detector(path: str | Path, device: str | None = None) -> AnoMem | AnoMemEnsemble:
    """The detector of a model file of either kind: :meth:`anomem.AnoMem.save`'s or
    :meth:`AnoMemEnsemble.save`'s (what ``anomem score`` and ``anomem evaluate`` read).

    Raises:
        ModelFileError: as :meth:`anomem.AnoMem.load`.
    """
    found = _read(path)
    if isinstance(found, EnsembleFile):
        return AnoMemEnsemble.from_file(found, device)
    return AnoMem.from_model_file(found, device)
