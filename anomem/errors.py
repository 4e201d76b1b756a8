"""Exceptions raised by anomem.

Every public entry point raises one of these (never a bare ``assert`` or an
error from deep inside torch), and each message names the offending input and
the fix.  All derive from :class:`AnoMemError`, so ``except AnoMemError``
catches everything the library raises on purpose.
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
