"""The network is built once, from the configuration, at its final shape; the stages change values.

A fit, of any kind, leaves every tensor at the shape the build gave it, and reading a model
file is that build plus the weights.  The scales are records made in one place
(:mod:`anomem.scales`).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomem import AnoMem
from anomem.config import get_config
from anomem.scales import scales_of
from anomem.torch_model import AnoMemModel

TINY = {"width": 4, "mem_sizes": [8, 4], "stage1_epochs": 1, "stage2_epochs": 2, "batch_size": 16}


def shapes(model: AnoMemModel) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["one_class", "semi", "kmeans"])
def test_a_fit_leaves_every_tensor_at_the_shape_of_the_build(kind, digits, tmp_path):
    overrides = {**TINY, "consolidate_factor": 4, **({"prototypes": "kmeans"} if kind == "kmeans" else {})}
    labels = (digits.y_train[:40] == 1).astype(int) if kind == "semi" else None
    det = AnoMem("digits", **overrides).fit(digits.x_train[:40], labels, validation_fraction=0.0,
                                            progress=False)
    built = AnoMemModel(det.config_, semi_supervised=kind == "semi")
    assert shapes(built) == shapes(det.network_)
    assert (built.heads is None) == (kind != "semi") == (det.network_.heads is None)
    # the memories are at the size consolidation grows them to: 4 x N_mem, k-means at N_mem
    growth = 1 if kind == "kmeans" else 4
    assert [len(m.patterns) for m in built.memories] == [growth * m.size for m in built.memories]
    back = AnoMem.load(det.save(tmp_path / "m.anomem"))
    np.testing.assert_array_equal(back.decision_function(digits.x_test[:8]),
                                  det.decision_function(digits.x_test[:8]))


def test_heads_exist_only_in_a_semi_supervised_build_and_draw_nothing_until_stage_2():
    cfg = get_config("digits", {"width": 4})
    torch.manual_seed(0)
    one_class = AnoMemModel(cfg)
    after_one_class = torch.rand(3)
    torch.manual_seed(0)
    semi = AnoMemModel(cfg, semi_supervised=True)
    assert torch.equal(torch.rand(3), after_one_class)          # the same stream afterwards
    assert one_class.heads is None and not one_class.semi_supervised
    assert len(semi.heads) == len(semi.scales) and semi.semi_supervised
    assert not any(p.requires_grad for p in semi.heads.parameters())   # frozen until stage 2
    semi.load_state_dict(one_class.state_dict(), strict=False)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(semi.encoder(x)[-1], one_class.encoder(x)[-1])


def test_stage_1_counters_are_buffers_no_file_holds():
    model = AnoMemModel(get_config("digits", {"width": 4}))
    names = {name for name, _ in model.named_buffers()}
    assert {"memories.0.wins", "memories.0.recent"} <= names
    assert not any(k.endswith((".wins", ".recent")) for k in model.state_dict())
    assert model.memories[0].wins.shape == (model.memories[0].size,)


@pytest.mark.parametrize("global_memory,memories,sizes,alphas", [
    ("every", [0, 1, 2, 3, 4, 5, 6, 7], [8, 4, 24, 12] * 2, [1.0, 2.0, 1.0, 2.0]),
    ("own", [0, 1, 2, 3, 4, 5], [8, 4, 12] * 2, [1.0, 2.0, 2.0]),
    ("shared", [0, 1, 1, 2, 3, 3], [8, 4, 4] * 2, [1.0, 2.0, 2.0]),
    ("none", [0, 1, 2, 3], [8, 4] * 2, [1.0, 2.0]),
])
def test_scales_name_their_memory_view_alpha_and_size(global_memory, memories, sizes, alphas):
    cfg = get_config("digits", {"width": 4, "mem_sizes": [8, 4], "global_mem_factor": 3,
                                "global_memory": global_memory, "score_views": "mirror"})
    scales = scales_of(cfg, (4, 8, 16, 32))
    assert [s.memory for s in scales] == memories and [s.size for s in scales] == sizes
    assert [s.index for s in scales] == list(range(len(scales)))
    per_view = len(scales) // 2
    assert [s.view for s in scales] == [0] * per_view + [1] * per_view
    assert [s.alpha for s in scales] == alphas * 2
    for s in scales:                          # memory stages 3 and 4: 16 and 32 channels
        assert s.dim == {2: 16, 3: 32}[s.stage]
        assert s.ratio == (1.0 if s.pooled else {2: 0.5, 3: 1.0}[s.stage])
    assert len(AnoMemModel(cfg).memories) == max(memories) + 1


def test_heads_on_a_fitted_one_class_network(digits):
    """The semi-supervised copy carries the one-class network's state; only its heads are new."""
    from anomem.data.convert import to_image_tensor, to_normal_flags
    from anomem.errors import InvalidInputError
    from anomem.stages.common import RunOptions
    from anomem.stages.stage2 import fit_heads

    det = AnoMem("digits", **TINY).fit(digits.x_train[:40], validation_fraction=0.0, progress=False)
    one_class = det.network_
    with pytest.raises(InvalidInputError, match="semi_supervised_copy"):
        fit_heads(one_class, torch.zeros(4, 3, 16, 16, dtype=torch.uint8), torch.tensor([1, 1, 0, 0]),
                  {}, RunOptions())
    twin = one_class.semi_supervised_copy()
    assert twin.semi_supervised and not one_class.semi_supervised
    state = one_class.state_dict()
    assert all(torch.equal(v, twin.state_dict()[k]) for k, v in state.items())
    labels = (digits.y_train[:40] == 1).astype(int)
    x = to_image_tensor(digits.x_train[:40], 16, "x")
    fit_heads(twin, x, to_normal_flags(labels, len(x), "labels"), {}, RunOptions())
    assert all(torch.equal(v, one_class.state_dict()[k]) for k, v in state.items())   # untouched
