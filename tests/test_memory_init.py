"""``memory_init="data"``: the patterns start as real feature vectors (stage1.seed_memories)."""

from __future__ import annotations

import torch

from anomem.config import get_config
from anomem.stages.common import RunOptions
from anomem.stages.stage1 import seed_memories
from anomem.torch_model import AnoMemModel


def _model(sizes: list[int]) -> AnoMemModel:
    torch.manual_seed(0)
    # the map scales only: a pooled scale has one vector per image (fewer than its patterns
    # here), which the second test's case covers
    cfg = get_config("digits", {"width": 4, "mem_sizes": sizes, "batch_size": 8,
                                "memory_init": "data", "global_memory": "none"})
    return AnoMemModel(cfg)


def _images(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8)
    y = torch.tensor([1, 0] * (n // 2))
    return x, y


def test_every_pattern_is_a_distinct_feature_vector_of_a_normal_image_of_the_first_batch():
    model = _model([8, 4])
    x, y = _images()
    buffers = {k: v.clone() for k, v in model.encoder.named_buffers()}
    seed_memories(model, x, y, RunOptions())
    for k, v in model.encoder.named_buffers():                 # running statistics untouched
        if k.endswith(("running_mean", "running_var")):
            assert torch.equal(v, buffers[k]), k
    model.train()
    with torch.no_grad():
        maps = model.features(x[y == 1][:8].float() / 255)   # normal images, first batch
    for z, memory in zip(maps, model.memories):
        vecs = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        # Direct differences, not cdist's matrix-product path, whose cancellation
        # leaves ~1e-3 for an exact copy.  The features are recomputed here by the
        # same operations on the same batch, so a copied pattern matches to float32
        # rounding of the features themselves (relative 1e-5 of their scale).
        trained = memory.patterns.detach()[:memory.size]          # the patterns stage 1 trains
        dist = torch.cdist(trained, vecs,
                           compute_mode="donot_use_mm_for_euclid_dist")   # (N_mem, n_vectors)
        nearest = dist.min(dim=1)
        tol = 1e-5 * float(vecs.norm(dim=1).max())
        assert torch.all(nearest.values <= tol), "a pattern is not one of the feature vectors"
        assert len(set(nearest.indices.tolist())) == memory.size, "patterns repeat"


def test_fewer_vectors_than_patterns_still_gives_distinct_patterns_near_real_vectors():
    model = _model([8, 64])          # the last scale has 2x2 maps: 2 normal images x 4 < 64
    x, y = _images(4)
    seed_memories(model, x, y, RunOptions())
    p = model.memories[1].patterns.detach()[:64]
    assert torch.unique(p, dim=0).shape[0] == 64
    model.train()
    with torch.no_grad():
        z = model.features(x[y == 1].float() / 255)[1]
    vecs = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    assert torch.cdist(p, vecs, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values.max() < 0.05


def test_random_init_is_left_alone_by_training_setup():
    cfg = get_config("digits", {"width": 4, "mem_sizes": [8, 4]})
    assert cfg.memory.init == "random"
    torch.manual_seed(0)
    a = AnoMemModel(cfg).memories[0].patterns.detach()
    torch.manual_seed(0)
    b = AnoMemModel(cfg.replace(memory_init="data")).memories[0].patterns.detach()
    assert torch.equal(a, b)         # construction is identical; only stage 1 seeds the memories
