"""Where a configuration comes from: a size preset, a YAML file, ``key=value`` overrides.

Keys may be given in any form :func:`~anomem.config.from_dict` reads:
sections (``memory: {beta: 2.0}``), ``section.key`` names (``memory.beta``) or
the flat names of version 1 (``beta``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from anomem.config.anomem_config import AnoMemConfig, dotted, from_dict
from anomem.config.recipes import recipe_values
from anomem.errors import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    # Paper §4.2 read literally: ResNet-50, memories of 512 and 256 patterns after stages 3
    # and 4, batch 1024, 200 epochs, and the paper's recipe (beta = 2, raw features, ...).
    "paper": {"recipe": "paper"},
    # The paper's network and budget with this package's choices (the tuned recipe); at
    # beta = 20 every stored pattern of these memories is a fixed point of Eq. 1.
    "gpu": {"memory.beta": 20.0},
    # A narrow ResNet-18 that trains one CIFAR-10 class in minutes on 2 CPU cores; tensors
    # of 8 MiB and more in pages of their own keep a fit on 5,000 images under 1 GB.
    "cpu": {"backbone.arch": "resnet18", "backbone.width": 16, "memory.sizes": [64, 32],
            "stage1.batch_size": 128, "stage1.epochs": 10, "stage1.lr": 0.1,
            "stage2.head_hidden": 64, "stage2.epochs": 60, "runtime.malloc_mmap_threshold": 8 << 20},
    # The embedded default: scikit-learn's 8x8 digits upsampled to 16x16.
    "digits": {"backbone.arch": "resnet18", "backbone.width": 8, "backbone.image_size": 16,
               "memory.sizes": [32, 16], "memory.ratios": [0.5, 1.0], "stage1.batch_size": 32,
               "stage1.epochs": 40, "stage1.lr": 0.1, "stage1.crop_scale": [0.6, 1.0],
               "stage2.head_hidden": 32, "stage2.head_pool": 1, "stage2.epochs": 60},
    # Localisation on 128x128 tiles (Magnetic Tile Defects): ImageNet stem, memory after
    # stages 2 and 3 (16x16 and 8x8 maps; stage 4 is never computed); see anomem.localisation.
    # Stage 1 learns where an image is wrong from pasted defects (pseudo_anomalies=local with
    # Eq. 11 at the positions) over 96 epochs, and a position head on a fine-tuned copy of
    # the encoder reads the heatmap (validated in docs/design.md, "The mtd preset").
    "mtd": {"backbone.arch": "resnet18", "backbone.width": 16, "backbone.stem": "imagenet",
            "backbone.image_size": 128, "memory.stages": [2, 3], "memory.sizes": [64, 32],
            "memory.ratios": [0.3, 1.0], "stage1.negatives": "same_position",
            "stage1.batch_size": 64, "stage1.epochs": 96, "stage1.lr": 0.1,
            "stage2.head_hidden": 64, "stage2.epochs": 60, "scoring.heatmap_reader": "tuned",
            "extensions.pseudo_anomalies": "local", "extensions.position_hinge": 5.0},
}


def parse_override(text: str) -> tuple[str, Any]:
    """Parse a command-line ``key=value`` override (``stage1.epochs=5``, or the flat
    ``stage1_epochs=5`` of version 1); the value is read as YAML."""
    import yaml

    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. stage1.epochs=5")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except (yaml.YAMLError, RecursionError):
        value = raw
    return key.strip(), value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a mapping (safe loader only)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist; pass a preset name "
                          f"({', '.join(PRESETS)}) or a path to a YAML file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {reason}") from None
    except OSError as e:
        raise ConfigError(f"config file {str(p)!r} cannot be read: {e.strerror or e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of keys to values")
    return data


def get_config(preset: str | Path = "cpu", overrides: Mapping[str, Any] | None = None
               ) -> AnoMemConfig:
    """A preset name or YAML path (which may name a ``preset`` to start from), plus overrides.

    The recipe (``recipe`` among the overrides, else the file's or the preset's,
    else ``tuned``) sets its values over the preset; the overrides win over both.
    """
    if not isinstance(preset, (str, Path)):
        raise ConfigError(f"config must be a preset name ({', '.join(PRESETS)}), a YAML path or "
                          f"an AnoMemConfig, got {type(preset).__name__}")
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ConfigError(f"overrides must be a mapping of config keys to values, got "
                          f"{type(overrides).__name__}")
    base: dict[str, Any]
    if str(preset) in PRESETS:
        base = dict(PRESETS[str(preset)])
    else:
        base = load_yaml(preset)
        parent = base.pop("preset", None)
        if parent is not None:
            if not isinstance(parent, str) or parent not in PRESETS:
                raise ConfigError(f"config file {str(preset)!r}: unknown preset {parent!r}; "
                                  f"choose one of {', '.join(PRESETS)}")
            base = {**dotted(PRESETS[parent]), **dotted(base)}
    base, overrides = dotted(base), dotted(overrides or {})
    recipe = overrides.get("recipe", base.get("recipe"))
    return from_dict({**base, **recipe_values(recipe), **overrides})
