"""When to show progress bars: where a person is watching, not in redirected logs.

``progress=None`` (the default of :meth:`anomem.AnoMem.fit` and of the command
line) means *auto*: bars are shown when standard error is a terminal or the
code runs in a Jupyter notebook, and hidden when output goes to a file or a
pipe, where tqdm's carriage-return updates would fill the log.
"""

from __future__ import annotations

import sys
from typing import Any

from anomem.errors import InvalidInputError


def in_notebook() -> bool:
    """True inside a Jupyter kernel (an IPython ``ZMQInteractiveShell``)."""
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    shell = get() if callable(get) else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr is not None and sys.stderr.isatty())
    except (AttributeError, ValueError):   # replaced or closed stream
        return False


def auto_progress(progress: Any = None) -> bool:
    """``progress`` when it is True or False; for None, whether a person is watching.

    Raises:
        InvalidInputError: ``progress`` is neither None nor a bool.
    """
    if progress is None:
        return stderr_is_terminal() or in_notebook()
    if not isinstance(progress, bool):
        raise InvalidInputError(f"progress must be True, False or None (auto: shown on a terminal "
                                f"or in a notebook), got {progress!r}")
    return progress
