"""The plain, exportable AnoMem network: encoder, memories, scale heads, fusion.

This module holds no training logic (see :mod:`anomem.stages`) and no file or
array handling (see :mod:`anomem.detector`); its ``forward`` maps a batch of
images in [0, 1] to anomaly scores, higher = more anomalous, and can be traced
for TorchScript / ONNX export.

Scales.  One memory scale per entry of ``memory.stages`` (the H(s) x W(s)
feature map after that ResNet stage, a set of C(s)-dimensional vectors), and,
unless ``extensions.global_memory="none"``, the image-level scale: the flattened 1D output
z of the encoder (the last memory stage's map, average-pooled), which the
paper contrasts "not only [...] but also" the intermediate maps (§3.1).  It is
held as a 1 x 1 map, so every per-scale operation applies to it unchanged, and
it comes last (largest alpha).  ``extensions.global_memory="own"`` gives it a Hopfield
layer of its own (``extensions.global_mem_factor`` x N_mem of the last map scale);
``"shared"`` retrieves it from the last map scale's memory; ``"every"`` adds the pooled output of every memory
stage as an image-level scale, each with a memory of its own (``extensions.global_mem_factor``
x N_mem of its stage).

Views.  ``scoring.views`` repeats every scale for each test-time view of the
image (its mirror image, and with ``"flips"`` upside down and both), each view
with memories of its own; scales are numbered view after view, and Eq. 13's
alphas are split evenly between the views, so the score is the mean of the
views' scores.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from anomem.backbone import ResNet
from anomem.config import AnoMemConfig
from anomem.config.checks import SCORE_VIEWS
from anomem.memory import HopfieldMemory, KMeansMemory


class ScaleHead(nn.Module):
    """Eq. 10: g(s) o phi, average pooling to ``pool`` x ``pool`` then a two-layer MLP to a scalar."""

    def __init__(self, channels: int, pool: int, hidden: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.mlp = nn.Sequential(nn.Linear(channels * pool * pool, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def phi(self, delta: torch.Tensor) -> torch.Tensor:
        """Pooled, flattened deviation map phi(Delta)."""
        return self.pool(delta).flatten(1)

    def forward(self, delta: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.phi(delta)).squeeze(-1)

    def position_map(self, delta: torch.Tensor) -> torch.Tensor:
        """g(s) at every position of Delta (B, C, H, W): (B, H, W), for heatmaps.

        The value at (i, j) is the head's output on the map equal to Delta_ij
        everywhere: phi of a constant map is that constant in each of the p x p
        cells, so the first layer reduces to its weights summed over the cells
        and g(s) becomes a 1x1 convolution (exact for a uniform map).
        """
        first, last = self.mlp[0], self.mlp[2]
        weight = first.weight.view(first.out_features, delta.shape[1], -1).sum(-1)   # (hidden, C)
        hidden = torch.relu(torch.einsum("kc,bchw->bkhw", weight, delta)
                            + first.bias.view(1, -1, 1, 1))
        return torch.einsum("k,bkhw->bhw", last.weight[0], hidden) + last.bias[0]


class AnoMemModel(nn.Module):
    """Encoder f, the memory layers, optional scale heads, and the scoring of every scale.

    One-class score of a scale, s(s) = ||Delta(s)||_2 over the whole map (Eq. 9;
    ``scoring.scale_norm="rms"`` divides by sqrt(H(s) W(s)) so that every scale is a
    per-position magnitude); semi-supervised, s(s) = g(s)(phi(Delta(s)))
    (Eq. 10).  Fusion: sum_s alpha(s) s(s) / sum_s alpha(s) (Eq. 13).  The
    one-class scores are first standardised by ``score_mean`` / ``score_std``
    (0 / 1, i.e. the plain Eq. 13, unless ``scoring.calibrate`` or a semi-supervised
    ``scoring.semi_score="heads+oc"`` model set them from the training normals); with
    ``"heads+oc"`` the semi-supervised score is the fused heads plus that fused,
    standardised one-class score times ``oc_weight`` (set by the fit, see
    :func:`anomem.stages.stage2.one_class_weight`), each head clipped to [0, M]
    (the range Eq. 11 trains).

    Example:
        >>> from anomem.config import get_config
        >>> m = AnoMemModel(get_config("digits")).eval()
        >>> m(torch.rand(2, 3, 16, 16)).shape
        torch.Size([2])
    """

    def __init__(self, config: AnoMemConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ResNet(config.backbone.arch, config.backbone.width, config.backbone.stem)
        self.stages = tuple(s - 1 for s in config.memory.stages)
        map_dims = tuple(self.encoder.channels[i] for i in self.stages)
        n_maps, g = len(self.stages), config.extensions.global_memory
        self.pooled_of = config.pooled_of
        self.dims = map_dims + tuple(map_dims[i] for i in self.pooled_of)
        own = g in ("own", "every")
        factor = config.extensions.global_mem_factor
        sizes = tuple(config.memory.sizes) + (tuple(factor * config.memory.sizes[i]
                                                    for i in self.pooled_of) if own else ())
        self.memories = nn.ModuleList(
            HopfieldMemory(d, n, config.memory.beta, config.memory.hopfield_steps,
                           config.memory.hopfield_tol, config.memory.normalize, config.scoring.retrieval)
            for d, n in zip(self.dims, sizes))
        self.memory_of = tuple(range(n_maps)) + (tuple(range(n_maps, len(sizes))) if own
                                                 else self.pooled_of)
        # score_views: every view adds the scales of one view (dims, memory_of, alphas) once more,
        # with memories of its own that stage 1 does not train (copy_view_memories fills them)
        self.views = SCORE_VIEWS[config.scoring.views]
        per_view, n_mem = len(self.dims), len(self.memories)
        for _ in self.views[1:]:
            self.memories.extend(copy.deepcopy(self.memories[k]).requires_grad_(False)
                                 for k in range(n_mem))
        self.dims = self.dims * len(self.views)
        self.memory_of = tuple(v * n_mem + k for v in range(len(self.views)) for k in self.memory_of)
        self.spatial_scales = tuple(v * per_view + i for v in range(len(self.views))
                                    for i in range(n_maps))
        self.heads: nn.ModuleList | None = None
        # projector="mlp": stage 1's projection head per scale (Eq. 4 after it); scoring never uses it
        self.projectors = (nn.ModuleList(nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
                                         for d in self.dims[:per_view])
                           if config.extensions.projector == "mlp" else None)
        alphas = torch.tensor(config.alphas * len(self.views))
        self.register_buffer("alphas", alphas / alphas.sum())
        self.register_buffer("score_mean", torch.zeros(len(self.dims)))
        self.register_buffer("score_std", torch.ones(len(self.dims)))
        self.register_buffer("oc_weight", torch.ones(()))

    @classmethod
    def build(cls, config: AnoMemConfig, semi_supervised: bool = False) -> AnoMemModel:
        """The network a fit leaves: ``AnoMem.load`` is ``build`` + ``load_state_dict``.

        K-means memories (zero centroids, N_mem x d per scale) when ``memory.prototypes="kmeans"``,
        the heads of Eq. 10 when ``semi_supervised``.
        """
        model = cls(config)
        model.grow_memories()
        if config.memory.prototypes == "kmeans":
            model.use_kmeans([torch.zeros(model.memory(s).patterns.shape)
                              for s in range(len(model.dims))])
        if semi_supervised:
            model.add_heads()
        return model

    @torch.no_grad()
    def grow_memories(self) -> None:
        """Each memory to ``config.memory_growth`` x its patterns, the added ones copies.

        Stage 1 trains N_mem patterns per memory; consolidation
        (:func:`anomem.stages.consolidate.consolidate_prototypes`) starts by growing
        them, and the copies, which answer no query (the first of equal
        attentions wins), restart at the worst-answered vectors.  Copies change
        no retrieval: Eq. 1's attention splits evenly among equal patterns.
        """
        f = self.config.memory_growth
        if f > 1:
            for memory in self.memories:
                memory.patterns = nn.Parameter(memory.patterns.detach().repeat(f, 1),
                                               requires_grad=memory.patterns.requires_grad)

    @torch.no_grad()
    def copy_view_memories(self) -> None:
        """``scoring.views``: every view after the first gets a copy of the first view's memories.

        Stage 1 trains the memories of the image itself; at its end each other
        view (a flip of the image) gets a copy of them, which consolidation
        (:func:`anomem.stages.consolidate.consolidate_prototypes`) then moves
        onto the same view of the training normals, so a view is compared with
        prototypes of normal images seen the same way.  The paper is silent on
        test-time views; measured in ``docs/design.md``.
        """
        n = len(self.memories) // len(self.views)
        for i in range(n, len(self.memories)):
            self.memories[i].patterns.copy_(self.memories[i % n].patterns)

    @property
    def semi_supervised(self) -> bool:
        return self.heads is not None

    def memory(self, scale: int) -> nn.Module:
        """The memory that serves scale ``scale`` (0-based)."""
        return self.memories[self.memory_of[scale]]

    def add_heads(self) -> nn.ModuleList:
        """Create (and return) the per-scale MLPs of the semi-supervised detector (Eq. 10)."""
        c = self.config
        pools = ([c.stage2.head_pool] * len(self.stages) + [1] * len(self.pooled_of)) * len(self.views)
        self.heads = nn.ModuleList(ScaleHead(d, p, c.stage2.head_hidden) for d, p in zip(self.dims, pools))
        return self.heads

    def use_kmeans(self, centroids: list[torch.Tensor]) -> None:
        """Replace every memory by nearest-k-means-centroid retrieval, one per scale (Table 4 ablation)."""
        self.memories = nn.ModuleList(KMeansMemory(c, self.config.memory.normalize) for c in centroids)
        self.memory_of = tuple(range(len(centroids)))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps z(s) at the memory scales; the image-level ones as (B, C, 1, 1) maps."""
        maps = self.encoder(x, upto=self.stages[-1] + 1)
        out = [maps[i] for i in self.stages]
        out += [out[i].mean(dim=(2, 3), keepdim=True) for i in self.pooled_of]
        return out

    def view_features(self, x: torch.Tensor, view: int | None = None) -> list[torch.Tensor]:
        """:meth:`features` of every ``scoring.views`` view of ``x``, view after view (or of ``view`` alone).

        A view's maps are flipped back, so position (i, j) of every view's map
        shows the same part of the image.
        """
        out = []
        for dims in (self.views if view is None else self.views[view:view + 1]):
            maps = self.features(x.flip(dims) if dims else x)
            out += [z.flip(dims) for z in maps] if dims else maps
        return out

    def deviation_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Eq. 8: Delta(s) = z(s) - HF(s)(z(s)) at every memory scale (and view), each (B, C, H, W)."""
        return self.deviations(self.view_features(x))

    def deviations(self, maps: list[torch.Tensor], view: int | None = None) -> list[torch.Tensor]:
        """Eq. 8 on feature maps already computed (one per scale, as :meth:`view_features`
        returns for every view, or for ``view`` alone)."""
        scales = range(len(maps)) if view is None else self.view_scales(view)
        return [self.memory(s).deviation(z) for s, z in zip(scales, maps)]

    def view_scales(self, view: int) -> range:
        """The scales (0-based, as numbered in :attr:`dims`) of ``scoring.views`` view ``view``."""
        per_view = len(self.dims) // len(self.views)
        return range(view * per_view, (view + 1) * per_view)

    def retrieval_margin(self, x: torch.Tensor) -> torch.Tensor:
        """(B,): the smallest distance to a retrieval tie over every scale and position of each image.

        A nearest-pattern retrieval at a near-tie can pick either pattern under
        float rounding, and the semi-supervised heads see which (Eq. 10 reads the
        signed Delta), so two correct runtimes may score such an image differently
        (see :mod:`anomem.export`).  +inf when every memory retrieves softly.
        """
        return torch.stack([self.memory(s).retrieval_margin(z.permute(0, 2, 3, 1)).flatten(1).amin(1)
                            for s, z in enumerate(self.view_features(x))], dim=1).amin(1)

    def oc_scores(self, deltas: list[torch.Tensor]) -> torch.Tensor:
        """Eq. 9 per scale, (B, S): ||Delta(s)||_2 (divided by sqrt(H W) when
        ``scoring.scale_norm="rms"``)."""
        rms = self.config.scoring.scale_norm == "rms"
        return torch.stack([d.flatten(1).norm(dim=1) / (math.sqrt(d.shape[2] * d.shape[3]) if rms
                                                        else 1.0) for d in deltas], dim=1)

    def scale_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Per-scale anomaly scores (B, S) before fusion: the heads' (Eq. 10) if any, else Eq. 9."""
        deltas = self.deviation_maps(x)
        if self.heads is not None:
            return torch.stack([h(d) for h, d in zip(self.heads, deltas)], dim=1)
        return self.oc_scores(deltas)

    def score_and_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The fused image score (B,) and every scale's per-position scores (B, H(s), W(s)).

        The one place where a scale's deviation becomes a score: a position's
        one-class score is ||Delta(s)_ij|| / score_std(s), a head's is
        :meth:`ScaleHead.position_map`; the image score fuses the scale scores
        with alpha (Eq. 13).  The maps feed :mod:`anomem.localisation`.
        """
        deltas = self.deviation_maps(x)
        oc = (self.oc_scores(deltas) - self.score_mean) / self.score_std
        oc_maps = [d.norm(dim=1) / sd for d, sd in zip(deltas, self.score_std)]
        if self.heads is None:
            return oc @ self.alphas, oc_maps
        heads = torch.stack([h(d) for h, d in zip(self.heads, deltas)], dim=1)
        maps = [h.position_map(d) for h, d in zip(self.heads, deltas)]
        if self.config.scoring.semi_score == "heads+oc":
            # Eq. 11 trains d <= 1/M on normals and d >= M on anomalies and nothing beyond:
            # outside [0, M] a head extrapolates, so it is clipped there before the one-class
            # score is added (measured in docs/design.md).
            m = self.config.stage2.margin
            w = self.oc_weight
            return (heads.clamp(0.0, m) + w * oc) @ self.alphas, [
                h.clamp(0.0, m) + w * o for h, o in zip(maps, oc_maps)]
        return heads @ self.alphas, maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score_and_maps(x)[0]
