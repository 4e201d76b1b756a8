"""The whole configuration: one frozen dataclass of sections, and its dictionary forms.

:func:`to_dict` gives the sections' form (``{"memory": {"beta": 10.0}, ...}``),
which YAML files and model files hold; :func:`from_dict` reads that form, the
``section.key`` names and the flat names of version 1
(:func:`anomem.config.migration.migrate`), and checks every key and value.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from anomem.config import sections as sec
from anomem.config.checks import check
from anomem.config.migration import FLAT_NAMES, migrate
from anomem.config.recipes import plain, recipe_values
from anomem.config.sections import SECTIONS
from anomem.errors import ConfigError


@dataclass(frozen=True)
class AnoMemConfig:
    """Every hyper-parameter of AnoMem, by section (:mod:`anomem.config.sections`).

    ``recipe`` records the recipe asked for (``tuned``, the defaults, or
    ``paper``); ``recipe="paper"`` (through :func:`~anomem.config.get_config`
    or :meth:`replace`) sets every choice to the paper's literal value, and
    :meth:`beyond_paper` lists where a configuration departs from it.

    Example:
        >>> cfg = AnoMemConfig().replace(**{"memory.beta": 2.0}, stage1_epochs=3)
        >>> cfg.memory.beta, cfg.stage1.epochs, cfg.get("stage1.epochs")
        (2.0, 3, 3)
    """

    recipe: str = "tuned"
    backbone: sec.Backbone = field(default_factory=sec.Backbone)
    memory: sec.Memory = field(default_factory=sec.Memory)
    stage1: sec.Stage1 = field(default_factory=sec.Stage1)
    stage2: sec.Stage2 = field(default_factory=sec.Stage2)
    scoring: sec.Scoring = field(default_factory=sec.Scoring)
    extensions: sec.Extensions = field(default_factory=sec.Extensions)
    runtime: sec.Runtime = field(default_factory=sec.Runtime)

    def __post_init__(self) -> None:
        check("recipe", self.recipe)
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"config section {name!r} must be an anomem.config.{cls.__name__}, "
                                  f"got {type(getattr(self, name)).__name__}; build configurations "
                                  f"with get_config or from_dict")

    @property
    def consolidates(self) -> bool:
        """Whether the memories a fit leaves are consolidated Hopfield patterns
        (``extensions.consolidate > 0``, ``memory.use_memory``, ``memory.prototypes="hopfield"``)."""
        return (self.extensions.consolidate > 0 and self.memory.use_memory
                and self.memory.prototypes == "hopfield")

    @property
    def memory_growth(self) -> int:
        """Patterns a memory holds after stage 1 per pattern trained: ``extensions.consolidate_factor``
        when :attr:`consolidates`, else 1."""
        return self.extensions.consolidate_factor if self.consolidates else 1

    def get(self, key: str) -> Any:
        """The value of the key ``section.key`` (or ``recipe``).

        Raises:
            ConfigError: not a key (with the closest one).
        """
        if key not in KEYS:
            raise ConfigError(f"unknown config key {_hint(key)}; the keys are listed in anomem.config")
        section, _, name = key.partition(".")
        return getattr(getattr(self, section), name) if name else getattr(self, section)

    def replace(self, **changes: Any) -> AnoMemConfig:
        """A copy with ``changes`` (any key form :func:`from_dict` reads) applied and validated;
        a ``recipe`` among them sets its values first (the other changes win over it)."""
        changes = dotted(changes)
        return from_dict({**to_dotted(self), **recipe_values(changes.get("recipe")), **changes})

    def beyond_paper(self) -> dict[str, tuple[Any, Any]]:
        """The choices where this configuration departs from the paper: key -> (value, literal).

        Example:
            >>> from anomem.config import get_config
            >>> sorted(get_config("cpu", {"recipe": "paper"}).beyond_paper())
            []
            >>> get_config("cpu", {"recipe": "paper", "beta": 10.0}).beyond_paper()
            {'memory.beta': (10.0, 2.0)}
        """
        lit = recipe_values("paper")
        return {k: (self.get(k), v) for k, v in lit.items() if plain(self.get(k)) != v}


#: Every key, ``recipe`` and ``section.key``, in the order of :func:`to_dict`.
KEYS: tuple[str, ...] = ("recipe", *(f"{name}.{f.name}" for name, cls in SECTIONS.items()
                                     for f in dataclasses.fields(cls)))
_TUPLE_KEYS = {f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)
               if str(f.type).startswith("tuple")}


def _hint(key: Any) -> str:
    """``'key'``, with the closest key (a flat name as its ``section.key``) when there is one."""
    close = difflib.get_close_matches(str(key), [*KEYS, *FLAT_NAMES], n=1)
    return f"{key!r} (did you mean {FLAT_NAMES.get(close[0], close[0])!r}?)" if close else repr(key)


def dotted(d: Mapping[Any, Any]) -> dict[Any, Any]:
    """A configuration mapping of any key form (sections, ``section.key``, flat names of
    version 1) with ``section.key`` names: the form merges and recipes use."""
    out = {}
    for key, value in migrate(d, version=1).items():
        if key in SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"config section {key!r} must be a mapping of its keys (e.g. "
                                  f"{key}: {{...}}), got {value!r}")
            out.update({f"{key}.{name}": v for name, v in value.items()})
        else:
            out[key] = value
    return out


def from_dict(d: Mapping[str, Any]) -> AnoMemConfig:
    """Build a validated config from a mapping of any key form; unknown keys raise :class:`ConfigError`."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"a config must be a mapping of keys to values, got {type(d).__name__}")
    flat = dotted(d)
    unknown = sorted(set(flat) - set(KEYS), key=repr)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(map(_hint, unknown))}; the keys are "
                          f"listed in anomem.config (one class per section)")
    for k in _TUPLE_KEYS & set(flat):
        if not isinstance(flat[k], (list, tuple)):
            raise ConfigError(f"config key {k!r}: must be a list, got {flat[k]!r}")
        flat[k] = tuple(flat[k])
    sections = {name: cls(**{f.name: flat[f"{name}.{f.name}"] for f in dataclasses.fields(cls)
                             if f"{name}.{f.name}" in flat}) for name, cls in SECTIONS.items()}
    return AnoMemConfig(**sections, **({"recipe": flat["recipe"]} if "recipe" in flat else {}))


def to_dict(c: AnoMemConfig) -> dict[str, Any]:
    """Plain-Python view of a config by section (lists for tuples), safe for JSON/YAML."""
    sections = {name: dataclasses.asdict(getattr(c, name)) for name in SECTIONS}
    return {"recipe": c.recipe, **{name: {k: plain(v) for k, v in values.items()}
                                   for name, values in sections.items()}}


def to_dotted(c: AnoMemConfig) -> dict[str, Any]:
    """Plain-Python view of a config with ``section.key`` names (lists for tuples)."""
    return {k: plain(c.get(k)) for k in KEYS}
