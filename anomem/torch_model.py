"""The plain, exportable AnoMem network: encoder, memories, scale heads, fusion.

This module holds no training logic (see :mod:`anomem.stages`) and no file or
array handling (see :mod:`anomem.detector`); its ``forward`` maps a batch of
images in [0, 1] to anomaly scores, higher = more anomalous, and can be traced
for TorchScript / ONNX export.

The network is built once, from the configuration (and whether the fit is
semi-supervised), with every tensor at its final shape: the scales
(:mod:`anomem.scales`), a memory per scale (or shared, see there) and view at
the size consolidation grows it to, the projectors of ``extensions.projector``
and, for a semi-supervised network only, the heads of Eq. 10.  The training
stages only change values: stage 1 trains the encoder and the first N_mem
patterns of the image's own memories, its end fills the other views' memories
and the grown patterns, k-means (Table 4) fills the patterns with centroids,
stage 2 draws and trains the heads, and a position head, where configured, is
trained last.  Reading a model file is building and
loading the weights (:mod:`anomem.model_file`).  Eq. 13's alphas are split
evenly between the views, so the score is the mean of the views' scores.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from anomem.backbone import ResNet
from anomem.config import AnoMemConfig
from anomem.config.checks import SCORE_VIEWS
from anomem.memory import HopfieldMemory
from anomem.scales import Scale, scales_of


class ScaleHead(nn.Module):
    """Eq. 10: g(s) o phi, average pooling to ``pool`` x ``pool`` then a two-layer MLP to a scalar."""

    def __init__(self, channels: int, pool: int, hidden: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.mlp = nn.Sequential(nn.Linear(channels * pool * pool, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """New initial weights, drawn as ``nn.Linear`` draws them and from the CPU's random
        stream whatever the device, so a head starts alike on a CPU and a GPU."""
        for layer in (self.mlp[0], self.mlp[2]):
            fresh = nn.Linear(layer.in_features, layer.out_features)
            layer.weight.copy_(fresh.weight)
            layer.bias.copy_(fresh.bias)

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


class PositionHead(nn.Module):
    """One anomaly logit per position of the finest grid it reads (``scoring.heatmap_reader``).

    Beyond the paper (which has no heatmap).  Under ``"head"`` it reads, at every map scale of
    the image's own view, the deviation vectors Delta(s)_ij of Eq. 8 beside the feature
    vectors z(s)_ij of the frozen encoder; under ``"tuned"`` it holds ``encoder``, a copy of
    the detector's encoder that is fine-tuned with it, and reads that copy's feature maps alone,
    at the memory's map stages or at ``scoring.head_stages``.
    Either way: a 1 x 1 convolution per scale to ``hidden`` channels, each upsampled (bilinear)
    to the finest grid and summed, then ReLU, a 3 x 3 convolution (edges replicated, so a
    constant input gives a constant output), ReLU and a 1 x 1 convolution to one logit per
    position.  :func:`anomem.stages.position_head.train_position_head` trains it on pasted
    defects.

    Example:
        >>> head = PositionHead([8, 16], hidden=4)
        >>> head([torch.rand(2, 8, 6, 6), torch.rand(2, 16, 3, 3)]).shape
        torch.Size([2, 6, 6])
    """

    def __init__(self, channels: list[int], hidden: int = 32, encoder: ResNet | None = None) -> None:
        super().__init__()
        self.channels, self.hidden = list(channels), hidden
        self.inputs = nn.ModuleList(nn.Conv2d(c, hidden, 1) for c in channels)
        self.mix = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, hidden, 3, padding=1,
                                                      padding_mode="replicate"),
                                 nn.ReLU(), nn.Conv2d(hidden, 1, 1))
        self.encoder = encoder

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """New initial weights of the read-out (not of ``encoder``), drawn as ``nn.Conv2d`` draws
        them, on the CPU's random stream whatever the device (as :meth:`ScaleHead.reset_parameters`)."""
        fresh = PositionHead(self.channels, self.hidden)
        self.inputs.load_state_dict(fresh.inputs.state_dict())
        self.mix.load_state_dict(fresh.mix.state_dict())

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Logits (B, H, W) on the grid of the largest of ``maps`` (one (B, C(s), H(s), W(s)) per scale)."""
        grid = max((m.shape[-2:] for m in maps), key=lambda hw: hw[0] * hw[1])
        mixed = sum(F.interpolate(conv(m), size=grid, mode="bilinear", align_corners=False)
                    for conv, m in zip(self.inputs, maps))
        return self.mix(mixed).squeeze(1)


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
    (the range Eq. 11 trains).  ``map_loc`` / ``map_scale`` (S, S) standardise the heatmap
    pixel by pixel under ``scoring.heatmap_calibration="position"`` (0 / 1 until a fit sets
    them, :func:`anomem.heatmaps.fit_map_calibration`).  Under
    ``scoring.heatmap_reader="head"`` or ``"tuned"`` a :class:`PositionHead` reads the heatmap instead of the
    deviation norms (:meth:`position_logits`); it never changes the image score.

    Example:
        >>> from anomem.config import get_config
        >>> m = AnoMemModel(get_config("digits")).eval()
        >>> m(torch.rand(2, 3, 16, 16)).shape
        torch.Size([2])
    """

    def __init__(self, config: AnoMemConfig, semi_supervised: bool = False) -> None:
        super().__init__()
        self.config = config
        bb = config.backbone
        self.encoder = ResNet(bb.arch, bb.width, bb.stem, padding=bb.padding)
        self.scales: tuple[Scale, ...] = scales_of(config, self.encoder.channels)
        self.views = SCORE_VIEWS[config.scoring.views]
        self.memories = self._memories()
        # projector="mlp": stage 1's projection head per scale (Eq. 4 after it); scoring never uses it
        self.projectors = (nn.ModuleList(nn.Sequential(nn.Linear(s.dim, s.dim), nn.ReLU(),
                                                       nn.Linear(s.dim, s.dim))
                                         for s in self.view_scales(0))
                           if config.extensions.projector == "mlp" else None)
        self.heads = self._heads() if semi_supervised else None
        self.position_head = self._position_head()
        alphas = torch.tensor([s.alpha for s in self.scales])
        self.register_buffer("alphas", alphas / alphas.sum())
        self.register_buffer("score_mean", torch.zeros(len(self.scales)))
        self.register_buffer("score_std", torch.ones(len(self.scales)))
        self.register_buffer("oc_weight", torch.ones(()))
        side = config.backbone.image_size
        self.register_buffer("map_loc", torch.zeros(side, side))
        self.register_buffer("map_scale", torch.ones(side, side))

    def _memories(self) -> nn.ModuleList:
        """One memory per index the scales name, at ``config.memory_growth`` x N_mem patterns.

        The image's own view's memories are drawn at random (N(0, 1/d), as stage 1
        starts them); another view's are copies that stage 1 does not train (its end
        fills them, :func:`anomem.stages.consolidate.fill_view_memories`).
        """
        c, memories = self.config, nn.ModuleList()
        scoring = "kmeans" if c.memory.prototypes == "kmeans" else c.scoring.retrieval
        per_view = len({s.memory for s in self.view_scales(0)})
        for s in self.scales:
            if s.memory < len(memories):          # served already: shared with its stage's map
                continue
            memories.append(HopfieldMemory(s.dim, s.size, c.memory.beta, c.memory.hopfield_steps,
                                           c.memory.hopfield_tol, c.memory.normalize, scoring,
                                           c.memory_growth) if s.view == 0
                            else copy.deepcopy(memories[s.memory % per_view]).requires_grad_(False))
        return memories

    def _heads(self) -> nn.ModuleList:
        """The per-scale MLPs of the semi-supervised detector (Eq. 10; 1 x 1 pooling on image-level
        scales).  Built frozen and without drawing from the global random stream: stage 2
        draws their initial weights when it starts (:meth:`ScaleHead.reset_parameters`) and
        trains them."""
        st = self.config.stage2
        with torch.random.fork_rng(devices=[]):
            return nn.ModuleList(ScaleHead(s.dim, 1 if s.pooled else st.head_pool, st.head_hidden)
                                 for s in self.scales).requires_grad_(False)

    def _position_head(self) -> PositionHead | None:
        """:class:`PositionHead` under ``scoring.heatmap_reader="head"`` (reading Delta and z of the
        image's own view's map scales) or ``"tuned"`` (with an encoder of its own, reading its z),
        else None; built without drawing from the global random stream (its training draws its
        weights and copies the encoder)."""
        reader = self.config.scoring.heatmap_reader
        if reader == "memory":
            return None
        with torch.random.fork_rng(devices=[]):
            if reader == "tuned":
                dims = [self.encoder.channels[i] for i in self.head_stages()]
                return PositionHead(dims, encoder=copy.deepcopy(self.encoder)).requires_grad_(False)
            dims = [2 * s.dim for s in self.view_scales(0) if not s.pooled]
            return PositionHead(dims).requires_grad_(False)

    def head_stages(self) -> list[int]:
        """The encoder stages (0-based) a fine-tuned position head reads: ``scoring.head_stages``,
        or the stages of the memory's map scales where it is empty."""
        chosen = self.config.scoring.head_stages
        return [s - 1 for s in chosen] if chosen else [s.stage for s in self.view_scales(0) if not s.pooled]

    def position_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """What :class:`PositionHead` reads of images ``x``, at every map scale of the image's own
        view (no test-time view): Delta(s) (Eq. 8) and z(s) stacked on channels, or the feature
        maps of the head's own encoder at :meth:`head_stages` where it has one
        (``heatmap_reader="tuned"``)."""
        tuned = self.position_head.encoder if self.position_head is not None else None
        if tuned is not None:
            stages = self.head_stages()
            maps = tuned(x, upto=max(stages) + 1)
            return [maps[i] for i in stages]
        z = self.features(x)
        d = self.deviations(z, view=0)
        return [torch.cat([d[i], z[i]], 1) for i, s in enumerate(self.view_scales(0)) if not s.pooled]

    def position_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The position head's logits (B, H, W) on the finest grid it reads, higher = more anomalous."""
        if self.position_head is None:
            raise RuntimeError('this network has no position head (scoring.heatmap_reader="memory")')
        return self.position_head(self.position_inputs(x))

    @property
    def semi_supervised(self) -> bool:
        return self.heads is not None

    def semi_supervised_copy(self) -> AnoMemModel:
        """A semi-supervised build of this configuration that carries this network's weights and
        buffers, its heads untrained: the heads of stage 2 (Eq. 10-12) on a stage 1 already fitted
        (:func:`anomem.stages.stage2.fit_heads` trains them).  This network is unchanged."""
        return self.rebuilt(self.config, True, "heads.")

    def rebuilt(self, config: AnoMemConfig, semi_supervised: bool, fresh: str) -> AnoMemModel:
        """A build of ``config`` that carries this network's weights and buffers but those whose
        name starts with ``fresh``, which it keeps as built (untrained); this network is unchanged.

        Raises:
            RuntimeError: the two builds differ beyond ``fresh``.
        """
        twin = AnoMemModel(config, semi_supervised=semi_supervised).to(self.alphas.device)
        kept = {k: v for k, v in self.state_dict().items() if not k.startswith(fresh)}
        missing, unexpected = twin.load_state_dict(kept, strict=False)
        if unexpected or not all(k.startswith(fresh) for k in missing):
            raise RuntimeError(f"the new build does not hold this network's state beyond {fresh!r} "
                               f"(missing {missing}, unexpected {unexpected})")
        return twin

    def memory(self, scale: int) -> HopfieldMemory:
        """The memory that serves scale ``scale`` (0-based)."""
        return self.memories[self.scales[scale].memory]

    def view_scales(self, view: int) -> tuple[Scale, ...]:
        """The scales of ``scoring.views`` view ``view`` (0: the image itself, which stage 1 trains)."""
        return tuple(s for s in self.scales if s.view == view)

    @property
    def n_maps(self) -> int:
        """Map scales of one view (the first entries of :meth:`features`; the pooled ones follow)."""
        return sum(not s.pooled for s in self.view_scales(0))

    def trained_memories(self) -> list[HopfieldMemory]:
        """The memories stage 1 trains: those of the image's own view, in order, each once."""
        return [self.memories[k] for k in sorted({s.memory for s in self.view_scales(0)})]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps z(s) at the scales of one view; the image-level ones as (B, C, 1, 1) maps."""
        scales = self.view_scales(0)
        maps = self.encoder(x, upto=max(s.stage for s in scales) + 1)
        return [maps[s.stage].mean(dim=(2, 3), keepdim=True) if s.pooled else maps[s.stage]
                for s in scales]

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
        scales = self.scales if view is None else self.view_scales(view)
        return [self.memories[s.memory].deviation(z) for s, z in zip(scales, maps)]

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
