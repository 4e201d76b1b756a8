"""The paper one switch away: the ``paper`` recipe, the presets that use it, the choices table.

The recipe and the table of choices in ``docs/design.md`` are both made from
the config fields' metadata, so these tests compare them with that one source.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anomem.config import (
    HOPFIELD_STEPS_CAP,
    NOT_IN_PAPER,
    PRESETS,
    AnoMemConfig,
    choices,
    choices_table,
    get_config,
)
from anomem.errors import ConfigError
from anomem.memory import HopfieldMemory

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_paper_recipe_sets_every_choice_to_its_literal_value(preset):
    cfg = get_config(preset, {"recipe": "paper"})
    literal = {k: f.metadata["literal"] for k, f in choices().items()}
    assert len(literal) >= 20
    for key, value in literal.items():
        if value != NOT_IN_PAPER:
            got = cfg.get(key)
            assert (list(got) if isinstance(got, tuple) else got) == value, key
    assert cfg.beyond_paper() == {}
    assert cfg.recipe == "paper"


def test_literal_values_by_hand():
    """The values the paper states, written out independently of the metadata."""
    cfg = get_config("cpu", {"recipe": "paper"})
    mem, ext, sc = cfg.memory, cfg.extensions, cfg.scoring
    assert (mem.normalize, mem.beta, sc.views, cfg.stage2.head_sampling) == (False, 2.0, "single", "uniform")
    assert (ext.global_memory, ext.consolidate, ext.reseed_dead, ext.pseudo_anomalies) == (
        "none", 0, False, "none")
    assert (sc.retrieval, sc.scale_norm, sc.semi_score) == ("hopfield", "frobenius", "heads")
    assert (cfg.stage2.head_inputs, cfg.stage2.head_deviations) == ("raw", "in_sample")
    assert cfg.memory.hopfield_steps == HOPFIELD_STEPS_CAP
    # the size preset is untouched
    assert (cfg.backbone.arch, cfg.backbone.width, cfg.memory.sizes) == ("resnet18", 16, (64, 32))


def test_default_recipe_departs_where_the_table_says():
    cfg = get_config("cpu")
    assert cfg.recipe == "tuned"
    departs = cfg.beyond_paper()
    assert departs["memory.normalize"] == (True, False)
    assert "scoring.calibrate" not in departs and departs["memory.beta"] == (10.0, 2.0)
    assert departs["memory.hopfield_steps"] == (3, HOPFIELD_STEPS_CAP)
    assert "stage1.negatives" not in departs and "stage1.variance" not in departs


def test_paper_preset_is_literal_and_gpu_preset_is_tuned():
    paper, gpu = get_config("paper"), get_config("gpu")
    for cfg in (paper, gpu):
        assert (cfg.backbone.arch, cfg.memory.sizes, cfg.stage1.batch_size, cfg.stage1.epochs) == (
            "resnet50", (512, 256), 1024, 200)
    assert paper.beyond_paper() == {} and paper.memory.beta == 2.0
    assert gpu.recipe == "tuned" and gpu.memory.beta == 20.0 and gpu.memory.normalize
    # asked for explicitly, the tuned recipe on the paper preset keeps the package defaults
    assert get_config("paper", {"recipe": "tuned"}).memory.normalize


def test_overrides_win_over_the_recipe_and_the_recipe_over_the_preset():
    cfg = get_config("mtd", {"recipe": "paper", "beta": 8.0})
    assert cfg.memory.beta == 8.0 and cfg.beyond_paper() == {"memory.beta": (8.0, 2.0)}
    assert cfg.stage1.negatives == "all"                       # the mtd preset's same_position is a choice
    assert get_config("mtd").stage1.negatives == "same_position"
    assert get_config("cpu").replace(recipe="paper").memory.normalize is False
    assert get_config("cpu").replace(recipe="paper", normalize=True).memory.normalize is True


def test_unknown_recipe_and_misspelt_key_name_the_fix():
    with pytest.raises(ConfigError, match="recipe.*tuned, paper"):
        get_config("cpu", {"recipe": "literal"})
    with pytest.raises(ConfigError, match="did you mean 'memory.normalize'"):
        get_config("cpu", {"normalise": False})
    with pytest.raises(ConfigError, match="did you mean 'stage1.epochs'"):
        get_config("cpu", {"stage1.epoch": 3})


def test_design_doc_holds_the_generated_choices_table():
    text = DESIGN.read_text(encoding="utf-8")
    assert choices_table() in text, "regenerate with: python -m anomem.config --choices-table"
    for key in choices():
        assert f"#### `{key}`" in text, f"docs/design.md has no section for the choice {key!r}"


def test_every_choice_in_design_doc_names_its_evidence():
    """The protocol of docs/design.md: each default says whether validation data chose it."""
    text = DESIGN.read_text(encoding="utf-8")
    for key in choices():
        section = text.split(f"#### `{key}`", 1)[1].split("\n#### ", 1)[0]
        assert "**Validation**" in section or "**Evidence:**" in section, (
            f"docs/design.md: the section of {key!r} has no **Validation** or **Evidence:** line")


def test_every_choice_has_a_literal_value_or_says_it_has_none():
    for key, f in choices().items():
        assert f.metadata["what"], key
        if f.metadata["literal"] != NOT_IN_PAPER:
            AnoMemConfig().replace(**{key: f.metadata["literal"]})   # a valid value


def test_literal_retrieval_iterates_eq1_to_its_fixed_point():
    """With the literal cap, Eq. 1 stops at a point that one more update moves by < tol."""
    torch.manual_seed(0)
    mem = HopfieldMemory(dim=16, size=32, beta=2.0, steps=HOPFIELD_STEPS_CAP, tol=1e-3,
                         normalize=False)
    q = 3 * torch.randn(64, 16)
    xi = mem(q)
    x = mem.stored()
    again = torch.softmax(2.0 * xi @ x.t(), dim=-1) @ x
    assert (again - xi).abs().amax() < 1e-3
    # three steps (the tuned default) stop short of it on the same queries
    short = HopfieldMemory(dim=16, size=32, beta=2.0, steps=1, tol=1e-3, normalize=False)
    short.load_state_dict(mem.state_dict())
    once = short(q)
    assert (torch.softmax(2.0 * once @ x.t(), dim=-1) @ x - once).abs().amax() > 1e-3
