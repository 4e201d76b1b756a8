"""The recipes and the choices they set, read from the sections' field metadata.

Each key made with :func:`~anomem.config.sections.choice` carries the paper's
literal value; the ``paper`` recipe and the table of choices in
``docs/design.md`` are both made from it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from anomem.config.checks import RECIPE_NAMES
from anomem.config.sections import NOT_IN_PAPER, SECTIONS
from anomem.errors import ConfigError

#: The recipes: ``tuned`` keeps every default of this package; ``paper`` sets every
#: choice to the paper's literal reading (its field metadata).  A recipe applies over a
#: size preset and under explicit overrides.
RECIPES = RECIPE_NAMES


def plain(v: Any) -> Any:
    """A value as YAML and the choices table hold it (lists for tuples)."""
    return list(v) if isinstance(v, tuple) else v


def choices() -> dict[str, dataclasses.Field]:
    """The keys (``section.key``) that are choices beyond the paper, with their fields, in order."""
    return {f"{name}.{f.name}": f for name, section in SECTIONS.items()
            for f in dataclasses.fields(section) if "literal" in f.metadata}


def recipe_values(recipe: str | None) -> dict[str, Any]:
    """The key values (``section.key``) a recipe sets (none for ``tuned`` or None).

    Raises:
        ConfigError: not a recipe name.
    """
    if recipe is None or recipe == "tuned":
        return {}
    if recipe != "paper":
        raise ConfigError(f"config key 'recipe': got {recipe!r}, expected one of {', '.join(RECIPES)}")
    return {k: f.metadata["literal"] for k, f in choices().items()
            if f.metadata["literal"] != NOT_IN_PAPER}


def anchor(key: str) -> str:
    """The anchor of the heading ``#### `key``` in a rendered markdown page (dots dropped)."""
    return key.replace(".", "")


def choices_table() -> str:
    """The markdown table of choices in ``docs/design.md``: key, default, literal value, what.

    Generated from the fields' metadata, so the table and the ``paper`` recipe
    read the same source (``tests/test_recipe.py`` checks the document holds it).
    """
    def cell(v: Any) -> str:
        if v == NOT_IN_PAPER:
            return "—"
        text = "null" if v is None else str(v).lower() if isinstance(v, bool) else plain(v)
        return f"`{text}`"

    rows = ["| key | default | literal (`recipe=paper`) | what it is |", "|---|---|---|---|"]
    rows += [f"| [`{k}`](#{anchor(k)}) | {cell(f.default)} | {cell(f.metadata['literal'])} "
             f"| {f.metadata['what']} |" for k, f in choices().items()]
    return "\n".join(rows)
