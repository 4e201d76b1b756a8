"""The sections of a configuration, one frozen dataclass each, and what a choice records.

A section groups the keys of one part of the design: the encoder
(:class:`Backbone`), the Hopfield memories (:class:`Memory`), the two training
stages (:class:`Stage1`, :class:`Stage2`), how an image is scored
(:class:`Scoring`), the mechanisms this package adds to the paper
(:class:`Extensions`) and how a run is set up (:class:`Runtime`).  A key's
full name is ``section.key`` (``memory.beta``).  Defaults are the paper's
where it gives one; the keys made with :func:`choice` are this package's
choices where the paper is silent or read otherwise, each with the paper's
literal value (``docs/design.md`` gives each one's reason and measurement).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from anomem.config.checks import validate_section

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


class _Checked:
    """A section checks its values when it is made (:func:`anomem.config.checks.validate_section`)."""

    name = ""

    def __post_init__(self) -> None:
        validate_section(self.name, self)


@dataclass(frozen=True)
class Backbone(_Checked):
    """The ResNet encoder f: ``arch``, ``width`` (channels of the first stage), ``stem``
    (``cifar``: 3x3 conv, no max-pool; ``imagenet``: 7x7/2 conv + max-pool),
    ``image_size`` (inputs are resized to it, square) and ``padding`` (what every
    convolution reads beyond the border: ``zeros``, as ResNet, or ``replicate``, the edge
    pixel repeated, so that a constant image gives constant feature maps)."""

    name = "backbone"
    arch: str = "resnet50"
    width: int = 64
    stem: str = "cifar"
    image_size: int = 32
    padding: str = choice("zeros", "zeros", "what convolutions read beyond the border: zeros or "
                          "the edge replicated")


@dataclass(frozen=True)
class Memory(_Checked):
    """The Hopfield memories (Eq. 1, 7, 8): ``stages`` (ResNet stages 1-4 followed by a
    memory), ``sizes`` (N_mem of each), ``ratios`` (share of positions Eq. 7 samples),
    Eq. 1's ``beta``, ``normalize``, ``hopfield_steps`` and ``hopfield_tol``, and the
    patterns' ``init``; ``use_memory=False`` and ``prototypes="kmeans"`` are Table 4's
    ablations."""

    name = "memory"
    stages: tuple[int, ...] = (3, 4)
    sizes: tuple[int, ...] = (512, 256)
    ratios: tuple[float, ...] = (0.3, 1.0)
    beta: float = choice(10.0, 2.0, "inverse temperature of Eq. 1")
    normalize: bool = choice(True, False, "L2-normalised queries and patterns (cosine attention)")
    hopfield_steps: int = choice(3, HOPFIELD_STEPS_CAP, "most updates of Eq. 1; literal: until it "
                                 f"converges (moves < hopfield_tol), capped at {HOPFIELD_STEPS_CAP}")
    hopfield_tol: float = 1e-3
    use_memory: bool = True
    prototypes: str = "hopfield"
    init: str = choice("random", NOT_IN_PAPER, "initial patterns, N(0, 1/d) or first-batch features")


@dataclass(frozen=True)
class Stage1(_Checked):
    """Stage 1 (Eq. 2-7, Algorithm 1): the temperature ``tau``, the variance term's weight
    ``lambda_v`` and form ``variance``, Eq. 7's ``negatives``; SGD with Nesterov momentum
    and cosine annealing (``batch_size``, ``epochs``, ``lr``, ``momentum``,
    ``weight_decay``; ``min_batches``: a small set's batches shrink so that an epoch takes at
    least that many, :func:`anomem.stages.batches.stage1_batch`, and with ``lr_scaling``
    ``linear`` or ``sqrt`` the rate shrinks with them, :func:`anomem.stages.batches.stage1_lr`; stage 2
    uses ``batch_size`` as configured, and the same momentum and weight decay); the two views' augmentations
    (``crop_scale``, ``jitter``, ``blur_sigma``, ``noise_std``, ``view_geometry``)."""

    name = "stage1"
    tau: float = 0.1
    lambda_v: float = 0.05
    variance: str = choice("components", "components", "Eq. 6's Var over components or the batch")
    negatives: str = choice("all", "all", "Eq. 7's negatives: every sampled vector or the same position's")
    batch_size: int = 1024
    epochs: int = 200
    min_batches: int = choice(5, 0, "the least batches an epoch takes: small sets get smaller ones")
    lr: float = 0.5
    lr_scaling: str = choice("none", "none", "a smaller batch's rate: as configured, or scaled with it")
    momentum: float = 0.9
    weight_decay: float = 1e-4
    crop_scale: tuple[float, float] = (0.2, 1.0)
    jitter: float = 0.4
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    noise_std: float = 0.05
    view_geometry: str = choice("independent", "independent", "crops and flips of the two views")


@dataclass(frozen=True)
class Stage2(_Checked):
    """Stage 2's heads (Eq. 10-12), trained only when the fit has labelled anomalies: the
    double hinge's ``margin`` M, each head's ``head_hidden`` units after pooling to
    ``head_pool`` x ``head_pool``, ``epochs`` and ``lr``, and the heads' batches
    (``head_sampling``), inputs (``head_inputs``) and deviations (``head_deviations``)."""

    name = "stage2"
    margin: float = 2.0
    head_hidden: int = 128
    head_pool: int = 2
    epochs: int = 50
    lr: float = 0.05
    head_sampling: str = choice("balanced", "uniform", "the heads' batches: classes balanced or not")
    head_inputs: str = choice("standardised", "raw", "phi(Delta) standardised before the heads")
    head_deviations: str = choice("out_of_fold", "in_sample",
                                  "the heads train on deviations from memories without the image")


@dataclass(frozen=True)
class Scoring(_Checked):
    """How an image is scored (Eq. 8, 9, 13): Eq. 8's ``retrieval``, the test-time
    ``views``, Eq. 9's ``scale_norm``, the semi-supervised score (``semi_score``,
    ``oc_evidence``), the one-class standardisation (``calibrate``, ``calibration``), an
    image-level scale's alpha (``image_alpha``), the scales a heatmap reads
    (``heatmap_scales``), the mirrored margin it is computed with (``heatmap_margin``) and
    its standardisation pixel by pixel (``heatmap_calibration``), what reads the positions
    (``heatmap_reader``: the memory, or a head trained on pasted defects, on the frozen
    encoder or on a fine-tuned copy of it; ``head_stages``, the encoder stages a fine-tuned head
    reads, so an earlier stage gives it a finer grid), and ``target_frr``, the false-rejection
    rate on held-out normals that sets the decision threshold."""

    name = "scoring"
    retrieval: str = choice("nearest", "hopfield", "Eq. 8 retrieves the nearest pattern or Eq. 1")
    views: str = choice("mirror", "single", "test-time views the image score averages")
    scale_norm: str = choice("rms", "frobenius", "Eq. 9's norm of the whole map or per position")
    semi_score: str = choice("heads+oc", "heads", "the semi-supervised score: heads, + one-class")
    oc_evidence: float | None = choice(2.0, NOT_IN_PAPER, "the one-class score's weight, in anomalies")
    calibrate: bool = choice(False, False, "one-class scales standardised before Eq. 13")
    calibration: str = choice("scales", NOT_IN_PAPER, "standardise each scale or the fused score")
    image_alpha: str = choice("stage", NOT_IN_PAPER, "Eq. 13's alpha of an image-level scale")
    heatmap_scales: str = choice("finest", NOT_IN_PAPER, "the heatmap: the finest map scale alone, or "
                                 "all map scales fused with Eq. 13's alphas")
    heatmap_margin: float = choice(0.0, NOT_IN_PAPER, "the input of a heatmap mirrored beyond its "
                                   "border by this fraction of its side, the margin cropped after")
    heatmap_calibration: str = choice("none", NOT_IN_PAPER, "the heatmap standardised pixel by pixel "
                                      "on the maps of the held-out normal images, or not")
    heatmap_reader: str = choice("memory", NOT_IN_PAPER, "the heatmap read from the memory's "
                                 "deviations, or by a position head trained on pasted defects "
                                 "(`tuned`: on its own fine-tuned copy of the encoder)")
    head_stages: tuple[int, ...] = choice((), NOT_IN_PAPER, "the encoder stages a `tuned` position "
                                          "head reads (empty: the memory's map stages)")
    target_frr: float = 0.05


@dataclass(frozen=True)
class Extensions(_Checked):
    """Mechanisms beyond the paper, each off in its literal reading: image-level memory scales
    (``global_memory``, ``global_mem_factor``), restarting dead patterns (``reseed_dead``),
    the closing consolidation of the patterns (``consolidate`` Lloyd steps on memories grown
    ``consolidate_factor`` times), stage 1's projection head (``projector``), rotated or
    locally defective pseudo-anomalies (``pseudo_anomalies``, ``pseudo_fraction``, and
    ``defect_scale``, the size of the local defects), Eq. 11 on stage 1's per-position
    deviations (``position_hinge``), whether labelled
    anomalies enter stage 1 (``contrast_anomalies``) and the weights stage 1 ends at
    (``weight_average``) and their BatchNorm statistics (``batchnorm_pass``, both in
    :mod:`anomem.stages.averaging`)."""

    name = "extensions"
    global_memory: str = choice("every", "none", "image-level scale(s) beside the maps")
    global_mem_factor: int = choice(1, NOT_IN_PAPER, "patterns of an image-level memory, x N_mem")
    reseed_dead: bool = choice(False, False, "patterns that answered no normal query restart")
    consolidate: int = choice(10, 0, "Lloyd steps of the patterns on the training normals")
    consolidate_factor: int = choice(1, 1, "memories grow this many times before consolidation")
    projector: str = choice("none", "none", "an MLP head before Eq. 4 in stage 1")
    pseudo_anomalies: str = choice("rotation", "none", "copies labelled anomalous in Eq. 3: rotated, "
                                   "or with a pasted local defect (`local`, per position)")
    pseudo_fraction: float = 0.5
    defect_scale: float = 2.0
    position_hinge: float = choice(0.0, 0.0, "weight of Eq. 11 on stage 1's per-position deviations "
                                   "(pushes pseudo-anomalous positions off the memory)")
    contrast_anomalies: bool = choice(True, True, "labelled anomalies enter stage 1 (Eq. 3, y = 0)")
    weight_average: float = choice(0.0, 0.0, "stage 1 ends at the mean weights of this last share "
                                   "of its steps (0: its last weights)")
    batchnorm_pass: bool = choice(False, False, "BatchNorm statistics recomputed on the training "
                                  "normals at the end of stage 1")


@dataclass(frozen=True)
class Runtime(_Checked):
    """How a run is set up: its ``seed``, and keys that never change what a fit computes:
    ``device``; ``amp`` (bf16 autocast of the stage-1 encoder, CUDA only) and
    ``channels_last`` (NHWC, CUDA only); ``malloc_mmap_threshold`` (CPU with glibc: tensors
    of at least this many bytes get pages of their own during stage 1, see
    :mod:`anomem.heap`)."""

    name = "runtime"
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    channels_last: bool = False
    malloc_mmap_threshold: int = 0


#: The sections in the order a configuration lists them.
SECTIONS: dict[str, type] = {c.name: c for c in (Backbone, Memory, Stage1, Stage2, Scoring,
                                                  Extensions, Runtime)}
