"""anomem: anomaly detection via multi-scale contrasted memory (AnoMem).

The estimator :class:`AnoMem` fits on images (optionally with a few labelled
anomalies) and scores new images; higher scores are more anomalous.
:class:`AnoMemEnsemble` fits several on the same images and scores them together.
"""

__version__ = "0.1.0"

from anomem.base import Detector  # noqa: E402
from anomem.config import AnoMemConfig, get_config  # noqa: E402
from anomem.detector import AnoMem  # noqa: E402
from anomem.ensemble import AnoMemEnsemble, load_detector  # noqa: E402
from anomem.errors import (  # noqa: E402
                           AnoMemError,
                           ConfigError,
                           InvalidInputError,
                           ModelFileError,
                           RequiresFitting,
                           TrainingDivergedError,
)

__all__ = ["AnoMem", "AnoMemConfig", "AnoMemEnsemble", "AnoMemError", "ConfigError", "Detector",
           "InvalidInputError", "ModelFileError", "RequiresFitting", "TrainingDivergedError",
           "__version__", "get_config", "load_detector"]
