"""Choosing a preset (``auto`` and the one-line guide) and showing progress where someone watches."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomem import AnoMem
from anomem.cli.main import main
from anomem.config import PRESETS, get_config
from anomem.errors import InvalidInputError
from anomem.presets import AUTO, PRESET_GUIDE, auto_preset, files_side, input_side
from anomem.progress import auto_progress

ROOT = Path(__file__).resolve().parents[1]
NO_TRAINING = {"stage1_epochs": 0, "width": 4, "heatmap_reader": "memory"}   # no stage 1, no position head


def test_the_auto_rule_and_the_side_it_reads():
    assert [auto_preset(s) for s in (8, 24, 25, 32, 64, 65, 128, 2000)] == [
        "digits", "digits", "cpu", "cpu", "cpu", "mtd", "mtd", "mtd"]
    rng = np.random.default_rng(0)
    assert input_side(rng.random((3, 8, 8))) == 8                        # (N, H, W)
    assert input_side(rng.random((3, 40, 30, 3))) == 40                  # (N, H, W, C)
    assert input_side(torch.rand(2, 3, 20, 100)) == 100                  # (N, C, H, W)
    assert input_side([Image.new("RGB", (200, 20)), rng.random((8, 8)), rng.random((3, 9, 9))]) == 9
    with pytest.raises(InvalidInputError, match="must have shape"):
        input_side(np.zeros(5))
    assert set(PRESET_GUIDE) == {AUTO, *PRESETS}                         # every preset explained


@pytest.mark.parametrize("side,preset", [(8, "digits"), (40, "cpu"), (100, "mtd")])
def test_anomem_defaults_to_auto_and_resolves_it_at_fit(side, preset):
    x = np.random.default_rng(0).integers(0, 256, (12, side, side, 3), dtype=np.uint8)
    det = AnoMem(**NO_TRAINING)
    assert det.config == AUTO and not hasattr(det, "config_")          # resolved at fit
    det.fit(x, validation_fraction=0.0)
    expected = get_config(preset, NO_TRAINING)
    assert det.config_ == expected and det.config_.backbone.width == 4           # overrides on top
    assert det.decision_function(x).shape == (12,)


def test_every_preset_is_explained_in_help_docstring_and_readme(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    help_text = capsys.readouterr().out
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("\n## Presets\n", 1)[1].split("\n## ", 1)[0]
    for name, line in PRESET_GUIDE.items():
        assert f"  {name}" in help_text and line in " ".join(help_text.split())
        assert f"| `{name}` | {line} |" in table
        assert f"``{name}``" in AnoMem.__doc__
    assert "default: auto" in help_text
    assert "use `--config cpu` for a real model" not in readme


def test_cli_fit_picks_the_preset_from_the_files(tmp_path, capsys, digits):
    folder = tmp_path / "good"
    folder.mkdir()
    for i, im in enumerate(digits.x_train[:10]):
        Image.fromarray(im).save(folder / f"{i}.png")
    Image.fromarray(np.kron(digits.x_train[0], np.ones((6, 6), np.uint8))).save(folder / "big.png")
    assert files_side(sorted(folder.iterdir())) == 8                     # the median, not the largest
    assert main(["fit", str(folder), "--set", "stage1_epochs=0", "--set", "width=4", "-q",
                 "-o", str(tmp_path / "m.anomem")]) == 0
    assert "preset auto -> digits (images 8 px): resnet18 width 4 at 16x16 px" in capsys.readouterr().err


def test_progress_auto_means_a_terminal_or_a_notebook(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert auto_progress(None) is False and auto_progress(True) is True
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert auto_progress(None) is True and auto_progress(False) is False
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    shell = type("ZMQInteractiveShell", (), {})()
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    assert auto_progress(None) is True
    with pytest.raises(InvalidInputError, match="progress must be True, False or None"):
        auto_progress("yes")


def test_fit_shows_bars_only_where_someone_watches(monkeypatch, capsys, digits):
    x = digits.x_train[digits.y_train == 0][:40]
    AnoMem("digits", stage1_epochs=1, width=4).fit(x)               # captured stderr: not a terminal
    assert "stage 1" not in capsys.readouterr().err
    monkeypatch.setattr("anomem.progress.stderr_is_terminal", lambda: True)
    AnoMem("digits", stage1_epochs=1, width=4).fit(x)
    assert "stage 1" in capsys.readouterr().err
