"""Exceptions raised by anomem.

Every public entry point raises one of these (never a bare ``assert`` or an
error from deep inside torch), and each message is one line naming the
offending input and the fix.  All derive from :class:`AnoMemError`, so
``except AnoMemError`` catches everything the library raises on purpose.

Which entry raises what:

* :class:`ConfigError`: ``AnoMem(config, **overrides)``, ``get_config``,
  ``from_dict``, ``parse_override``, ``AnoMemConfig(...)`` (unknown key, wrong
  type, out-of-range or non-finite value, unreadable or invalid YAML file),
  ``AnoMem.load(path, device=...)`` with a malformed device.
* :class:`InvalidInputError`: ``AnoMem.fit`` / ``decision_function`` /
  ``scale_scores`` / ``deviation_maps`` / ``anomaly_map`` / ``predict`` / ``predict_mask``
  (images, labels, ``batch_size``, ``threshold``, ``validation_fraction``,
  ``checkpoint_dir``, ``log``, a CUDA device the machine lacks), every reader
  in :mod:`anomem.data` (image arrays, image files and folders, CIFAR and MTD
  archives), ``AnoMem.load`` given something that is not a path.
* :class:`RequiresFitting`: scoring or ``predict`` before ``fit``/``load``; ``predict_mask``
  without a threshold on a detector loaded from a file that has no pixel threshold.
* :class:`ModelFileError`: ``AnoMem.load`` and a resuming ``fit`` (missing,
  truncated, corrupt (checksum), unsafe (pickled code), inconsistent or
  other-version model file or checkpoint; a checkpoint of another run).
* :class:`TrainingDivergedError`: ``AnoMem.fit`` (NaN/Inf loss, NaN/Inf
  weights, collapsed memory prototypes); the last good checkpoint is kept.

Writing a file (``save``, checkpoints, results) can also raise the operating
system's own :class:`OSError` (disk full, permission denied), unchanged, after
the previous file has been left intact.  Note that :class:`ModelFileError` is
an :class:`OSError` too, and :class:`InvalidInputError` and
:class:`ConfigError` are :class:`ValueError` s.
"""

from __future__ import annotations


class AnoMemError(Exception):
    """Base class of every error anomem raises on purpose."""


class InvalidInputError(AnoMemError, ValueError):
    """An argument, image, dataset or label array the library cannot take."""


class ConfigError(AnoMemError, ValueError):
    """A configuration key or value that is unknown or out of range."""


class RequiresFitting(AnoMemError, RuntimeError):
    """A detector was asked to score before :meth:`fit` was called."""


class ModelFileError(AnoMemError, OSError):
    """A model or checkpoint file that is missing, corrupt, unsafe or from another version."""


class TrainingDivergedError(AnoMemError, RuntimeError):
    """Training produced a NaN/Inf loss or collapsed memory prototypes."""
