"""Checks of the commands' path arguments that say what was found where arguments look swapped.

``anomem score images/ model.anomem`` should not answer that a model file
``images/`` does not exist: it says that ``images/`` is a folder, that
``model.anomem`` looks like the model file, and in which order the command
takes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from anomem.errors import InvalidInputError, ModelFileError
from anomem.model_file import EXPECTED
from anomem.serialization import TORCH_FILE, file_kind


def looks_like_model(path: str | None) -> bool:
    """An existing file that ``torch.save`` wrote, as every model file is."""
    return bool(path) and Path(path).is_file() and file_kind(path) == TORCH_FILE


def check_model_argument(model: str, usage: str, others: Sequence[str | None] = ()) -> None:
    """Refuse a MODEL argument that exists but is no model file, saying what it is.

    When one of ``others`` (the command's other path arguments) looks like a
    model file, the message names it and the order the command takes.  A
    missing path is left to :meth:`anomem.AnoMem.load` ("does not exist").

    Raises:
        ModelFileError: ``model`` is a folder, an image, a text file, etc.
    """
    p = Path(model)
    if not p.exists() or looks_like_model(model):
        return
    swapped = next((o for o in others if looks_like_model(o)), None)
    fix = (f"{swapped!r} looks like the model file: the model file comes first, {usage}"
           if swapped else f"pass {EXPECTED} first, {usage}")
    raise ModelFileError(f"MODEL {model!r} is {file_kind(p)}, not a model file; {fix}")


def check_image_sources(sources: Iterable[tuple[str, str | None]], usage: str) -> None:
    """Refuse a model file given where images go (a folder, image files or a list file).

    ``sources``: (argument name, path or None) pairs.

    Raises:
        InvalidInputError: one of them looks like a model file.
    """
    for label, src in sources:
        if looks_like_model(src):
            raise InvalidInputError(f"{label} {src!r} is a model file, not images (a folder, image "
                                    f"files or a .csv/.txt list); {usage}")
