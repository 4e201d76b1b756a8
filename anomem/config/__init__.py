"""Configuration of the AnoMem model and its two training stages: sections, presets, recipes.

A configuration is a frozen dataclass of sections (:mod:`anomem.config.sections`):
``backbone``, ``memory``, ``stage1``, ``stage2``, ``scoring``, ``extensions``
(mechanisms beyond the paper) and ``runtime``, beside ``recipe``.  It is built
from a size preset (``digits``, ``cpu``, ``mtd``, ``gpu``, ``paper``), a recipe
(``tuned``, the defaults, or ``paper``, every choice where this package departs
from the paper set back to the paper's literal reading), optionally a YAML
file, and ``key=value`` overrides.  A key is named ``section.key``
(``memory.beta``); the flat names of version 1 (``beta``, ``stage1_epochs``)
are read too (:func:`migrate`).  Unknown keys and out-of-range values raise
:class:`ConfigError` naming the key.

Each key that is a choice beyond the paper carries its literal value in its
field metadata (:func:`choices`); the ``paper`` recipe and the table of
choices in ``docs/design.md`` are both made from it (:func:`choices_table`).

Example:
    >>> cfg = get_config("cpu", overrides={"stage1.epochs": 2})
    >>> cfg.backbone.arch, cfg.memory.sizes, cfg.stage1.epochs
    ('resnet18', (64, 32), 2)
    >>> lit = get_config("cpu", overrides={"recipe": "paper"})
    >>> lit.memory.normalize, lit.memory.beta, lit.scoring.views
    (False, 2.0, 'single')
"""

from anomem.config.anomem_config import KEYS, AnoMemConfig, dotted, from_dict, to_dict, to_dotted
from anomem.config.loading import PRESETS, get_config, load_yaml, parse_override
from anomem.config.migration import CONFIG_VERSION, FLAT_NAMES, migrate
from anomem.config.recipes import RECIPES, choices, choices_table, recipe_values
from anomem.config.sections import (
    HOPFIELD_STEPS_CAP,
    NOT_IN_PAPER,
    SECTIONS,
    Backbone,
    Extensions,
    Memory,
    Runtime,
    Scoring,
    Stage1,
    Stage2,
    choice,
)
from anomem.errors import ConfigError

__all__ = ["CONFIG_VERSION", "FLAT_NAMES", "HOPFIELD_STEPS_CAP", "KEYS", "NOT_IN_PAPER", "PRESETS",
           "RECIPES", "SECTIONS", "AnoMemConfig", "Backbone", "ConfigError", "Extensions", "Memory",
           "Runtime", "Scoring", "Stage1", "Stage2", "choice", "choices", "choices_table", "dotted",
           "from_dict", "get_config", "load_yaml", "migrate", "parse_override", "recipe_values",
           "to_dict", "to_dotted"]
