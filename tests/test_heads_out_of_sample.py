"""The semi-supervised heads train on deviations a new image would have (out of fold).

Consolidation fits the memories to the training normals, so their in-sample
deviations are biased towards 0; heads trained on them learn a normal that
new normals do not look like.  Out of fold, the heads' output on the normals
they trained on and on new normals of the same class agree within their
spread.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomem import AnoMem
from anomem.data.convert import to_image_tensor, to_normal_flags
from anomem.protocols.one_vs_all import make_one_vs_all
from anomem.stages.common import RunOptions
from anomem.stages.stage2 import _in_order, head_features, out_of_fold

pytestmark = pytest.mark.slow


def _fit(digits, mode: str, factor: int = 4):
    """A short fit; ``factor`` 4 holds more prototypes than normal images (the worst case)."""
    task = make_one_vs_all(digits, 0, 0.05, 0)
    det = AnoMem("digits", stage1_epochs=3, head_deviations=mode, consolidate_factor=factor).fit(
        task.x_train, task.labels_train, validation_fraction=0.0, progress=False)
    return det, task


def _head_outputs(det, task):
    """Per scale: the heads' outputs on the training normals as they trained on them, and on the
    test normals as scored."""
    net = det.network
    x = to_image_tensor(task.x_train, net.config.backbone.image_size, "x")
    y = to_normal_flags(task.labels_train, len(x), "y")
    phis = head_features(net, x, y, RunOptions())
    with torch.no_grad():
        trained = torch.stack([h.mlp(p[y == 1]).squeeze(-1) for h, p in zip(net.heads, phis)], 1)
    new = det.scale_scores(task.x_test[task.labels_test == 0])
    return trained.numpy(), new


@pytest.mark.parametrize("mode, factor, agree", [("out_of_fold", 4, True), ("in_sample", 4, False),
                                                  ("out_of_fold", 1, True)])
def test_heads_see_training_normals_as_new_normals(digits, mode, factor, agree):
    det, task = _fit(digits, mode, factor)
    trained, new = _head_outputs(det, task)
    gap = np.abs(trained.mean(0) - new.mean(0))
    spread = np.sqrt(trained.var(0) + new.var(0))   # the spread of one draw from each minus the other
    assert bool((gap <= spread).all()) is agree, (gap, spread)


def test_rows_go_back_to_the_images_order():
    """Hand-worked: fold rows placed at their images' indices, for one tensor and for two."""
    parts = {torch.tensor([2, 0]): torch.tensor([[20.0], [0.0]]), torch.tensor([1]): torch.tensor([[10.0]])}
    assert _in_order({k: [v] for k, v in parts.items()}, 3)[0].squeeze(1).tolist() == [0.0, 10.0, 20.0]
    lists = {k: [v, -v] for k, v in parts.items()}
    a, b = _in_order(lists, 3)
    assert a.squeeze(1).tolist() == [0.0, 10.0, 20.0] and b.squeeze(1).tolist() == [0.0, -10.0, -20.0]


def test_out_of_fold_leaves_the_memories_and_covers_every_image(digits):
    det, task = _fit(digits, "out_of_fold")
    net = det.network
    before = [m.patterns.clone() for m in net.memories]
    x = to_image_tensor(task.x_train[:40], net.config.backbone.image_size, "x")
    folds, per_view = out_of_fold(net, x, torch.ones(len(x), dtype=torch.bool), RunOptions(),
                                  lambda deltas, v: [net.oc_scores(deltas)], "heads")
    per_view = [view[0] for view in per_view]
    assert sorted(torch.cat(folds).tolist()) == list(range(len(x)))
    assert all(p.shape[0] == len(x) for p in per_view)
    assert all(torch.equal(b, m.patterns) for b, m in zip(before, net.memories))
    # out of fold, a training normal is farther from the memories than in sample
    with torch.no_grad():
        in_sample = net.eval().oc_scores(net.deviation_maps(x.float() / 255))
    assert float(torch.cat(per_view, 1).mean()) > float(in_sample.mean())
