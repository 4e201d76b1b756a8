"""Configuration of the AnoMem model and its two training stages: presets and recipes.

A configuration is one flat, validated dataclass.  It is built from a size
preset (``digits``, ``cpu``, ``mtd``, ``gpu``, ``paper``), a recipe (``tuned``,
the defaults, or ``paper``, every choice where this package departs from the
paper set back to the paper's literal reading), optionally a YAML file, and
``key=value`` overrides; unknown keys and out-of-range values raise
:class:`ConfigError` naming the key.

Each key that is a choice beyond the paper carries its literal value in its
field metadata (:func:`choices`); the ``paper`` recipe and the table of
choices in ``docs/design.md`` are both made from it (:func:`choices_table`).

Example:
    >>> cfg = get_config("cpu", overrides={"stage1_epochs": 2})
    >>> cfg.arch, cfg.mem_sizes
    ('resnet18', (64, 32))
    >>> lit = get_config("cpu", overrides={"recipe": "paper"})
    >>> lit.normalize, lit.beta, lit.score_views
    (False, 2.0, 'single')
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anomem.config_checks import validate
from anomem.errors import ConfigError

#: Metadata value of a choice the paper has no counterpart of (it has no effect, or the
#: paper is silent and there is nothing literal to return to): the literal recipe leaves it.
NOT_IN_PAPER = "n/a"
#: Eq. 1 iterated "until convergence" (paper, §3.1) needs a bound: updates stop when no
#: component moves by hopfield_tol, or after this many.
HOPFIELD_STEPS_CAP = 100


def choice(default: Any, literal: Any, what: str) -> Any:
    """A config field that is a choice of this package, with the paper's ``literal`` value.

    ``literal`` is the value that reads the paper literally (:data:`NOT_IN_PAPER`
    when the paper has no counterpart); ``what`` is the one-line description the
    choices table shows.
    """
    return field(default=default, metadata={"literal": literal, "what": what})


@dataclass(frozen=True)
class AnoMemConfig:
    """Every hyper-parameter of AnoMem; defaults are the paper's where it gives one.

    The fields made with :func:`choice` are this package's choices where the
    paper is silent or read otherwise, each with the paper's literal value;
    ``recipe="paper"`` (through :func:`get_config` or :meth:`replace`) sets
    them all to it, :meth:`beyond_paper` lists where a configuration departs
    from it, and ``docs/design.md`` gives each one's reason and measurement.

    Backbone: ``arch``, ``width`` (channels of the first stage), ``stem``
    (``cifar``: 3x3 conv, no max-pool; ``imagenet``: 7x7/2 conv + max-pool),
    ``image_size`` (inputs are resized to it, square).
    Memory (Eq. 1, 7, 8): ``memory_stages`` (ResNet stages 1-4 followed by a
    Hopfield layer), ``mem_sizes`` (N_mem), ``ratios`` (sampled share of
    positions), ``beta``, ``hopfield_steps``, ``hopfield_tol``, ``normalize``,
    ``global_memory``, ``global_mem_factor``, ``reseed_dead``, ``consolidate``,
    ``consolidate_factor``, ``memory_init``; ``use_memory=False`` and
    ``prototypes="kmeans"`` are Table 4's ablations.
    Stage 1 (Eq. 2-7): ``tau``, ``lambda_v``, ``variance``, ``negatives``,
    ``projector``, ``pseudo_anomalies`` (with ``pseudo_fraction``),
    ``contrast_anomalies``, SGD with Nesterov momentum and cosine annealing
    (``batch_size``, ``stage1_*``) and the augmentations (``crop_scale``,
    ``jitter``, ``blur_sigma``, ``noise_std``, ``view_geometry``).
    Stage 2 (Eq. 8-13): ``score_retrieval``, ``score_views``, ``scale_norm``,
    ``margin``, ``head_hidden``, ``head_pool``, ``stage2_*``, ``head_sampling``,
    ``head_inputs``, ``head_deviations``, ``semi_score``, ``oc_evidence``,
    ``calibrate``, ``calibration``, ``image_alpha``.
    Decision: ``target_frr``, the false-rejection rate on held-out normals that
    sets the threshold.  ``recipe`` records the recipe asked for; ``seed``.
    Runtime (never what a fit computes): ``device``; ``amp`` (bf16 autocast of
    the stage-1 encoder, CUDA only) and ``channels_last`` (NHWC, CUDA only);
    ``malloc_mmap_threshold`` (CPU with glibc: tensors of at least this many
    bytes get pages of their own during stage 1, see :mod:`anomem.heap`).
    """

    arch: str = "resnet50"
    width: int = 64
    stem: str = "cifar"
    image_size: int = 32
    memory_stages: tuple[int, ...] = (3, 4)
    mem_sizes: tuple[int, ...] = (512, 256)
    ratios: tuple[float, ...] = (0.3, 1.0)
    beta: float = choice(10.0, 2.0, "inverse temperature of Eq. 1")
    normalize: bool = choice(True, False, "L2-normalised queries and patterns (cosine attention)")
    hopfield_steps: int = choice(3, HOPFIELD_STEPS_CAP, "most updates of Eq. 1; literal: until it "
                                 f"converges (moves < hopfield_tol), capped at {HOPFIELD_STEPS_CAP}")
    hopfield_tol: float = 1e-3
    use_memory: bool = True
    prototypes: str = "hopfield"
    memory_init: str = choice("random", NOT_IN_PAPER, "initial patterns, N(0, 1/d) or first-batch features")
    tau: float = 0.1
    lambda_v: float = 0.05
    negatives: str = choice("all", "all", "Eq. 7's negatives: every sampled vector or the same position's")
    batch_size: int = 1024
    stage1_epochs: int = 200
    stage1_lr: float = 0.5
    stage1_momentum: float = 0.9
    stage1_weight_decay: float = 1e-4
    crop_scale: tuple[float, float] = (0.2, 1.0)
    jitter: float = 0.4
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    noise_std: float = 0.05
    view_geometry: str = choice("independent", "independent", "crops and flips of the two views")
    global_memory: str = choice("every", "none", "image-level scale(s) beside the maps")
    global_mem_factor: int = choice(1, NOT_IN_PAPER, "patterns of an image-level memory, x N_mem")
    projector: str = choice("none", "none", "an MLP head before Eq. 4 in stage 1")
    pseudo_anomalies: str = choice("rotation", "none", "rotated copies labelled anomalous in Eq. 3")
    pseudo_fraction: float = 0.5
    contrast_anomalies: bool = choice(True, True, "labelled anomalies enter stage 1 (Eq. 3, y = 0)")
    reseed_dead: bool = choice(True, False, "patterns that answered no normal query restart")
    consolidate: int = choice(10, 0, "Lloyd steps of the patterns on the training normals")
    consolidate_factor: int = choice(4, 1, "memories grow this many times before consolidation")
    score_retrieval: str = choice("nearest", "hopfield", "Eq. 8 retrieves the nearest pattern or Eq. 1")
    score_views: str = choice("mirror", "single", "test-time views the image score averages")
    variance: str = choice("components", "components", "Eq. 6's Var over components or the batch")
    scale_norm: str = choice("rms", "frobenius", "Eq. 9's norm of the whole map or per position")
    semi_score: str = choice("heads+oc", "heads", "the semi-supervised score: heads, + one-class")
    oc_evidence: float | None = choice(2.0, NOT_IN_PAPER, "the one-class score's weight, in anomalies")
    margin: float = 2.0
    head_hidden: int = 128
    head_pool: int = 2
    stage2_epochs: int = 50
    stage2_lr: float = 0.05
    head_sampling: str = choice("balanced", "uniform", "the heads' batches: classes balanced or not")
    head_inputs: str = choice("standardised", "raw", "phi(Delta) standardised before the heads")
    head_deviations: str = choice("out_of_fold", "in_sample",
                                  "the heads train on deviations from memories without the image")
    calibrate: bool = choice(False, False, "one-class scales standardised before Eq. 13")
    calibration: str = choice("scales", NOT_IN_PAPER, "standardise each scale or the fused score")
    image_alpha: str = choice("stage", NOT_IN_PAPER, "Eq. 13's alpha of an image-level scale")
    target_frr: float = 0.05
    recipe: str = "tuned"
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    channels_last: bool = False
    malloc_mmap_threshold: int = 0

    def __post_init__(self) -> None:
        try:
            validate(self)
        except ConfigError:
            raise
        except (TypeError, ValueError) as e:  # a value of the wrong type, e.g. a list for a number
            raise ConfigError(f"invalid config value: {e}") from None

    @property
    def pooled_of(self) -> tuple[int, ...]:
        """The memory stages (0-based in ``memory_stages``) whose pooled output is an image-level scale."""
        n = len(self.memory_stages)
        return {"none": (), "every": tuple(range(n))}.get(self.global_memory, (n - 1,))

    @property
    def n_scales(self) -> int:
        """Memory scales S: one per entry of ``memory_stages``, plus the image-level one(s)."""
        return len(self.memory_stages) + len(self.pooled_of)

    @property
    def alphas(self) -> tuple[float, ...]:
        """Scale confidences: alpha = 2^(k-1) for the map after the k-th memory stage (paper §4.2).

        The image-level scales come after the maps.  ``image_alpha="stage"``: each
        takes the alpha of the stage it pools; ``"last"``: they continue the
        sequence, alpha(s) = 2^(s-1) for s = 1..S, the last the largest.
        """
        n = len(self.memory_stages)
        pooled = self.pooled_of if self.image_alpha == "stage" else range(n, self.n_scales)
        return tuple(2.0 ** k for k in (*range(n), *pooled))

    @property
    def consolidates(self) -> bool:
        """Whether the memories a fit leaves are consolidated Hopfield patterns
        (``consolidate > 0``, ``use_memory``, ``prototypes="hopfield"``)."""
        return self.consolidate > 0 and self.use_memory and self.prototypes == "hopfield"

    @property
    def memory_growth(self) -> int:
        """Patterns a memory holds after stage 1 per pattern trained: ``consolidate_factor``
        when :attr:`consolidates`, else 1."""
        return self.consolidate_factor if self.consolidates else 1

    def replace(self, **changes: Any) -> AnoMemConfig:
        """A copy with ``changes`` applied and validated; a ``recipe`` among them sets its values
        first (the other changes win over it)."""
        recipe = changes.get("recipe")
        return from_dict({**to_dict(self), **recipe_values(recipe), **changes})

    def beyond_paper(self) -> dict[str, tuple[Any, Any]]:
        """The choices where this configuration departs from the paper: key -> (value, literal).

        Example:
            >>> sorted(get_config("cpu", {"recipe": "paper"}).beyond_paper())
            []
            >>> get_config("cpu", {"recipe": "paper", "beta": 10.0}).beyond_paper()
            {'beta': (10.0, 2.0)}
        """
        lit = recipe_values("paper")
        return {k: (getattr(self, k), v) for k, v in lit.items() if _plain(getattr(self, k)) != v}


def _plain(v: Any) -> Any:
    """A value as YAML and the choices table hold it (lists for tuples)."""
    return list(v) if isinstance(v, tuple) else v


def choices() -> dict[str, dataclasses.Field]:
    """The fields of :class:`AnoMemConfig` that are choices beyond the paper, in field order."""
    return {f.name: f for f in dataclasses.fields(AnoMemConfig) if "literal" in f.metadata}


#: The recipes: ``tuned`` keeps every default of this package; ``paper`` sets every
#: choice to the paper's literal reading (its field metadata).  A recipe applies over a
#: size preset and under explicit overrides.
from anomem.config_checks import RECIPE_NAMES as RECIPES  # noqa: E402


def recipe_values(recipe: str | None) -> dict[str, Any]:
    """The key values a recipe sets (none for ``tuned`` or None).

    Raises:
        ConfigError: not a recipe name.
    """
    if recipe is None or recipe == "tuned":
        return {}
    if recipe != "paper":
        raise ConfigError(f"config key 'recipe': got {recipe!r}, expected one of {', '.join(RECIPES)}")
    return {k: f.metadata["literal"] for k, f in choices().items()
            if f.metadata["literal"] != NOT_IN_PAPER}


def choices_table() -> str:
    """The markdown table of choices in ``docs/design.md``: key, default, literal value, what.

    Generated from the fields' metadata, so the table and the ``paper`` recipe
    read the same source (``tests/test_recipe.py`` checks the document holds it).
    """
    def cell(v: Any) -> str:
        if v == NOT_IN_PAPER:
            return "—"
        text = "null" if v is None else str(v).lower() if isinstance(v, bool) else _plain(v)
        return f"`{text}`"

    rows = ["| key | default | literal (`recipe=paper`) | what it is |", "|---|---|---|---|"]
    rows += [f"| [`{k}`](#{k}) | {cell(f.default)} | {cell(f.metadata['literal'])} "
             f"| {f.metadata['what']} |" for k, f in choices().items()]
    return "\n".join(rows)


_TUPLE_KEYS = {f.name for f in dataclasses.fields(AnoMemConfig)
               if str(f.type).startswith("tuple")}


def from_dict(d: Mapping[str, Any]) -> AnoMemConfig:
    """Build a validated config from a mapping; unknown keys raise :class:`ConfigError`."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"a config must be a mapping of keys to values, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(AnoMemConfig)}
    unknown = sorted(set(d) - known, key=repr)
    if unknown:
        hints = [f"{k!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(
            str(k), known, n=1)) else repr(k) for k in unknown]
        raise ConfigError(f"unknown config key(s) {', '.join(hints)}; the keys are listed in "
                          f"anomem.config.AnoMemConfig")
    kw = {}
    for k, v in d.items():
        if k in _TUPLE_KEYS:
            if not isinstance(v, (list, tuple)):
                raise ConfigError(f"config key {k!r}: must be a list, got {v!r}")
            v = tuple(v)
        kw[k] = v
    return AnoMemConfig(**kw)


def to_dict(c: AnoMemConfig) -> dict[str, Any]:
    """Plain-Python view of a config (lists for tuples), safe for JSON/YAML."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(c).items()}


PRESETS: dict[str, dict[str, Any]] = {
    # Paper §4.2 read literally: ResNet-50, memories of 512 and 256 patterns after stages 3
    # and 4, batch 1024, 200 epochs, and the paper's recipe (beta = 2, raw features, ...).
    "paper": {"recipe": "paper"},
    # The paper's network and budget with this package's choices (the tuned recipe); at
    # beta = 20 every stored pattern of these memories is a fixed point of Eq. 1.
    "gpu": {"beta": 20.0},
    # A narrow ResNet-18 that trains one CIFAR-10 class in minutes on 2 CPU cores; tensors
    # of 8 MiB and more in pages of their own keep a fit on 5,000 images under 1 GB.
    "cpu": {"arch": "resnet18", "width": 16, "mem_sizes": [64, 32], "batch_size": 128,
            "stage1_epochs": 10, "stage1_lr": 0.1, "head_hidden": 64, "stage2_epochs": 60,
            "malloc_mmap_threshold": 8 << 20},
    # The embedded default: scikit-learn's 8x8 digits upsampled to 16x16.
    "digits": {"arch": "resnet18", "width": 8, "image_size": 16, "mem_sizes": [32, 16],
               "ratios": [0.5, 1.0], "batch_size": 32, "stage1_epochs": 40, "stage1_lr": 0.1,
               "crop_scale": [0.6, 1.0], "head_hidden": 32, "head_pool": 1, "stage2_epochs": 60},
    # Localisation on 128x128 tiles (Magnetic Tile Defects): ImageNet stem, memory after
    # stages 2 and 3 (16x16 and 8x8 maps; stage 4 is never computed); see anomem.localisation.
    "mtd": {"arch": "resnet18", "width": 16, "stem": "imagenet", "image_size": 128,
            "memory_stages": [2, 3], "mem_sizes": [64, 32], "ratios": [0.3, 1.0],
            "negatives": "same_position", "batch_size": 64, "stage1_epochs": 12,
            "stage1_lr": 0.1, "head_hidden": 64, "stage2_epochs": 60},
}


def parse_override(text: str) -> tuple[str, Any]:
    """Parse a command-line ``key=value`` override; the value is read as YAML."""
    import yaml

    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. stage1_epochs=5")
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
            if parent not in PRESETS:
                raise ConfigError(f"config file {str(preset)!r}: unknown preset {parent!r}; "
                                  f"choose one of {', '.join(PRESETS)}")
            base = {**PRESETS[parent], **base}
    overrides = dict(overrides or {})
    recipe = overrides.get("recipe", base.get("recipe"))
    return from_dict({**base, **recipe_values(recipe), **overrides})


if __name__ == "__main__":   # python -m anomem.config --choices-table
    import sys

    if sys.argv[1:] != ["--choices-table"]:
        sys.exit("usage: python -m anomem.config --choices-table")
    print(choices_table())
