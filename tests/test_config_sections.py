"""The configuration by section: every key form reads alike, and version 1's flat names migrate."""

from __future__ import annotations

import pytest

from anomem import AnoMem
from anomem.config import (
    CONFIG_VERSION,
    FLAT_NAMES,
    KEYS,
    ConfigError,
    from_dict,
    get_config,
    migrate,
    parse_override,
    to_dict,
    to_dotted,
)

FLAT = {"stage1_epochs": 3, "beta": 5.0, "mem_sizes": [8, 4], "score_views": "single", "seed": 7}
DOTTED = {"stage1.epochs": 3, "memory.beta": 5.0, "memory.sizes": [8, 4], "scoring.views": "single",
          "runtime.seed": 7}
NESTED = {"stage1": {"epochs": 3}, "memory": {"beta": 5.0, "sizes": [8, 4]},
          "scoring": {"views": "single"}, "runtime": {"seed": 7}}


def test_every_flat_name_of_version_1_names_one_key_and_every_key_has_one():
    assert sorted(FLAT_NAMES.values()) == sorted(KEYS)


@pytest.mark.parametrize("keys", [FLAT, DOTTED, NESTED, {**NESTED, "stage1.epochs": 3, "beta": 5.0}])
def test_flat_dotted_and_sectioned_keys_make_one_configuration(keys):
    cfg = get_config("digits", keys)
    assert (cfg.stage1.epochs, cfg.memory.beta, cfg.memory.sizes) == (3, 5.0, (8, 4))
    assert (cfg.scoring.views, cfg.runtime.seed, cfg.backbone.width) == ("single", 7, 8)
    assert AnoMem("digits", **keys).get_params() == {"config": "digits", **keys}
    assert cfg.replace(**keys) == cfg == from_dict(to_dict(cfg)) == from_dict(to_dotted(cfg))


def test_command_line_and_yaml_take_both_names(tmp_path):
    assert parse_override("stage1.epochs=3") == ("stage1.epochs", 3)
    flat, dotted = (get_config("digits", dict([parse_override(t)]))
                    for t in ("stage1_epochs=3", "stage1.epochs=3"))
    assert flat == dotted and flat.stage1.epochs == 3
    (tmp_path / "flat.yaml").write_text("preset: digits\nstage1_epochs: 3\nbeta: 5.0\n")
    (tmp_path / "nested.yaml").write_text("preset: digits\nstage1:\n  epochs: 3\nmemory: {beta: 5.0}\n")
    assert get_config(tmp_path / "flat.yaml") == get_config(tmp_path / "nested.yaml") == get_config(
        "digits", {"stage1.epochs": 3, "memory.beta": 5.0})


def test_the_later_of_two_names_for_one_key_wins_as_in_a_dict_merge():
    assert get_config("digits", {"beta": 1.0, "memory.beta": 2.0}).memory.beta == 2.0
    assert get_config("digits", {"memory": {"beta": 2.0}, "beta": 1.0}).memory.beta == 1.0


def test_migrate_groups_version_1_keys_by_section_and_keeps_the_unknown_for_the_caller():
    assert migrate({"stage1_epochs": 3, "memory.beta": 2.0, "recipe": "paper", "mystery": 1}, 1) == {
        "stage1": {"epochs": 3}, "memory": {"beta": 2.0}, "recipe": "paper", "mystery": 1}
    # version 2 has no flat names: a flat key stays as it is, and is then unknown
    assert migrate({"stage1_epochs": 3}, CONFIG_VERSION) == {"stage1_epochs": 3}
    with pytest.raises(ConfigError, match="version 3 is unknown.*1 to 2"):
        migrate({}, 3)


def test_unknown_keys_and_malformed_sections_name_the_fix():
    with pytest.raises(ConfigError, match=r"'memory.betta' \(did you mean 'memory.beta'\?\)"):
        get_config("digits", {"memory.betta": 1.0})
    with pytest.raises(ConfigError, match=r"'stage2_epoch' \(did you mean 'stage2.epochs'\?\)"):
        get_config("digits", {"stage2_epoch": 1})
    with pytest.raises(ConfigError, match=r"'stage1.stage1_epochs' \(did you mean 'stage1.epochs'\?\)"):
        get_config("digits", {"stage1": {"stage1_epochs": 1}})
    with pytest.raises(ConfigError, match="section 'scoring' must be a mapping"):
        get_config("digits", {"scoring": "single"})
    with pytest.raises(ConfigError, match="did you mean 'memory.beta'"):
        get_config("digits").get("beta")
