"""The position head of ``scoring.heatmap_reader="head"`` or ``"tuned"``: a heatmap learnt from
pasted defects.

Beyond the paper, which stops at image scores.  By default a heatmap reads the norm of
Eq. 8's deviation Delta(s)_ij at each position (:mod:`anomem.localisation`); here a small
:class:`~anomem.torch_model.PositionHead` on the frozen detector learns the read-out
instead, from Delta(s) and z(s) together: every step draws :data:`BATCH` training normals,
pastes a :func:`anomem.augment.local_pseudo_anomalies` defect (``extensions.defect_scale``)
into a copy of each, and fits the head's logit at each position of the finest grid it reads
to the share of pasted pixels in that position's cell (:func:`position_targets`) with
binary cross-entropy, :data:`STEPS` Adam steps at rate :data:`LR`; real defects with
pixel masks (``AnoMem.fit(..., masks=...)``) join every batch.  Under ``"tuned"`` the head
has an encoder of its own: a copy of the detector's, taken when the head's training starts
and fine-tuned with it (Adam at :data:`TUNE_LR`, BatchNorm statistics kept), and the head
reads that copy's feature maps alone, at the memory's map stages or at
``scoring.head_stages``.  The network is not
changed, so image scores are the same as without the head; the head's draws come from
random streams of their own (:func:`anomem.stages.common.stream_seed`), so they move no
other draw of the fit.

Measured (``docs/design.md``, ``scoring.heatmap_reader``): on an encoder trained with
local pseudo-anomalies the frozen head finds defects in held-out normals better than the
memory's map, whatever their shape; on the default encoder it wins only on defects of the
shapes it trains on.  The tuned head wins on both shapes and on both image sets validated,
and is the ``mtd`` preset's reader.  The settings (:data:`STEPS`, Delta and z as
inputs, 32 hidden channels) were fixed by a probe (``experiments/position_head``).

Example:
    >>> y = torch.ones(1, 4, 4); y[0, :2, :2] = 0          # a pasted 2 x 2 corner
    >>> position_targets(y, (2, 2)).tolist()
    [[[1.0, 0.0], [0.0, 0.0]]]
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from anomem.augment import local_pseudo_anomalies
from anomem.errors import TrainingDivergedError
from anomem.stages.common import RunOptions, stream_seed
from anomem.torch_model import AnoMemModel

#: Adam steps of the position head.
STEPS = 600
#: Training normals per step (each also pasted with a defect, so twice as many images).
BATCH = 32
#: Adam's learning rate.
LR = 1e-3
#: Adam's learning rate of the head's own encoder (``heatmap_reader="tuned"``).
TUNE_LR = 1e-4
#: Masked real defects added to every step's batch, when the fit has any.
MASKED_BATCH = 8
#: Steps whose mean loss makes one row of the history.
HISTORY_EVERY = 100


def position_targets(pixel_labels: torch.Tensor, grid: tuple[int, int] | torch.Size) -> torch.Tensor:
    """The head's target at each cell of a ``grid`` (B, H, W): the share of pasted pixels.

    ``pixel_labels`` (B, S, S): 1 = normal pixel, 0 = pasted, as
    :func:`anomem.augment.local_pseudo_anomalies` returns them; the cells tile the input as
    adaptive average pooling does (exact cells when S is a multiple of the grid's side).
    """
    return 1 - F.adaptive_avg_pool2d(pixel_labels.unsqueeze(1), tuple(grid)).squeeze(1)


def train_position_head(model: AnoMemModel, normals: torch.Tensor, opts: RunOptions,
                        defects: tuple[torch.Tensor, torch.Tensor] | None = None,
                        steps: int = STEPS) -> list[dict[str, float]]:
    """Train ``model.position_head`` on uint8 training normals (N, 3, S, S); returns the mean
    loss of every :data:`HISTORY_EVERY` steps.  The rest of ``model`` is frozen and unchanged.

    ``defects``: real defects, uint8 images (K, 3, S, S) and their bool masks (K, S, S)
    (:func:`anomem.fit_setup.masked_defects`); :data:`MASKED_BATCH` of them (drawn with
    replacement) join every step's batch, their masks as the targets.

    Raises:
        RuntimeError: the model has no position head.
        TrainingDivergedError: the loss became NaN or infinite.
    """
    head = model.position_head
    if head is None:
        raise RuntimeError('this network has no position head (scoring.heatmap_reader="memory")')
    cfg = model.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(cfg.runtime.seed, "position head init"))
        head.reset_parameters()
    head.requires_grad_(True)
    groups = [{"params": [*head.inputs.parameters(), *head.mix.parameters()], "lr": LR}]
    if head.encoder is not None:
        head.encoder.load_state_dict(model.encoder.state_dict())
        groups.append({"params": list(head.encoder.parameters()), "lr": TUNE_LR})
    model.eval()
    gen = torch.Generator().manual_seed(stream_seed(cfg.runtime.seed, "position head"))
    opt = torch.optim.Adam(groups)
    history: list[dict[str, Any]] = []
    running = 0.0
    for step in tqdm(range(steps), desc="position head", unit="step", dynamic_ncols=True,
                     disable=not (opts.progress and opts.is_main)):
        idx = torch.randint(len(normals), (min(BATCH, len(normals)),), generator=gen)
        v = normals[idx].to(opts.device).float().div_(255)
        x, _, y, _ = local_pseudo_anomalies(v, v, torch.ones(len(v), device=v.device), 1.0, gen,
                                            mask_scale=cfg.extensions.defect_scale)
        if defects is not None and len(defects[0]):
            pick = torch.randint(len(defects[0]), (MASKED_BATCH,), generator=gen)
            x = torch.cat([x, defects[0][pick].to(x.device).float().div_(255)])
            y = torch.cat([y, (~defects[1][pick]).to(y)])
        with torch.set_grad_enabled(head.encoder is not None):
            inputs = model.position_inputs(x)
        logits = head(inputs)
        loss = F.binary_cross_entropy_with_logits(logits, position_targets(y, logits.shape[-2:]))
        value = float(loss.detach())
        if not torch.isfinite(loss):
            raise TrainingDivergedError(f"position head: the loss became {value} at step {step + 1}; "
                                        f"the frozen network's features are not finite, refit it")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running += value
        if opts.log is not None and opts.is_main:
            opts.log({"stage": "position head", "step": step + 1, "loss": value})
        if (step + 1) % HISTORY_EVERY == 0 or step + 1 == steps:
            history.append({"step": step + 1, "loss": running / ((step % HISTORY_EVERY) + 1)})
            running = 0.0
    head.requires_grad_(False)
    return history
