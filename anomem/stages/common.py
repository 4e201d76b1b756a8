"""What both training stages share: run options, checkpoints, health checks, the schedule.

A checkpoint holds the model, optimiser, scheduler, the global step and every
RNG state, so a run resumed from it takes exactly the steps an uninterrupted
run would have taken (epoch statistics accumulated so far travel in ``extra``).
Checkpoints are written atomically and only from a healthy state: a NaN/Inf
loss, NaN/Inf weights or (stage 1) collapsed prototypes raise before anything
is saved, so the last checkpoint on disk is always the last good one.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anomem.data.convert import batches
from anomem.errors import ModelFileError, TrainingDivergedError
from anomem.serialization import atomic_torch_save, require_checksum, safe_torch_load

#: 2: the network is built at its final shape (memories at their grown size, heads from the
#: start of a semi-supervised fit), so a checkpoint of version 1 holds other weights.
CHECKPOINT_VERSION = 2


@dataclass
class RunOptions:
    """How a training stage runs (never what it computes).

    Args:
        device: where tensors live.
        checkpoint_dir: folder for ``stage1.ckpt`` / ``stage2.ckpt``; ``None`` disables.
        checkpoint_every: steps between checkpoints (a checkpoint is also written at the end).
        progress: show a tqdm bar with loss, images/s and ETA.
        log: called with a dict of metrics after every step (e.g. a CSV writer).
        on_epoch: called (on the main rank) after every stage-1 epoch with the model
            and that epoch's row of the history, e.g. to probe the encoder while it
            trains; it must leave the model as it found it (weights and train mode).
            Its random draws do not change training: torch's generators are restored
            after it.
        rank, world_size, gather: distributed training (see :mod:`anomem.distributed`).
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 100
    progress: bool = False
    log: Callable[[dict[str, Any]], None] | None = None
    on_epoch: Callable[[nn.Module, dict[str, float]], None] | None = None
    rank: int = 0
    world_size: int = 1
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def stream_seed(seed: int, name: str, index: int = 0) -> int:
    """The seed of the named random stream ``name`` at ``index`` (an epoch, a step) of a run.

    Streams of one run are independent by name, so adding a stream moves no other.
    """
    return (seed * 1_000_003 + zlib.crc32(name.encode()) * 10_007 + index) % (2 ** 63)


def sgd_cosine(params: list[nn.Parameter], lr: float, momentum: float, weight_decay: float,
               total_steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD with Nesterov momentum and a per-step cosine-annealed rate (paper §4.2)."""
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                          nesterov=momentum > 0)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))


def _diverged(stage: str, what: str, step: int, lr_key: str) -> TrainingDivergedError:
    return TrainingDivergedError(
        f"{stage}: {what} at step {step}. Lower the learning rate ({lr_key}=...) or the batch "
        f"size and train again (a changed configuration needs a new checkpoint folder); the "
        f"last good checkpoint (if any) is kept.")


def check_finite(loss: torch.Tensor, step: int, stage: str, lr_key: str) -> float:
    """The loss as a float; raises :class:`TrainingDivergedError` if it is NaN or infinite."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise _diverged(stage, f"the loss became {value}", step, lr_key)
    return value


def check_finite_parameters(module: nn.Module, step: int, stage: str, lr_key: str) -> None:
    """Raises :class:`TrainingDivergedError` if a parameter or buffer of ``module`` is NaN/Inf.

    Called before every checkpoint: an optimiser step can blow the weights up
    while the loss of that step was still finite.
    """
    for name, t in itertools.chain(module.named_parameters(), module.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise _diverged(stage, f"parameter {name!r} became NaN or infinite", step, lr_key)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, step: int, modules: dict[str, Any], fingerprint: dict[str, Any],
                    extra: dict[str, Any] | None = None) -> None:
    """Atomically write the state of ``modules`` (anything with ``state_dict``) at ``step``."""
    atomic_torch_save({"format": "anomem-checkpoint", "version": CHECKPOINT_VERSION,
                       "step": step, "fingerprint": fingerprint, "rng": rng_state(),
                       "state": {k: m.state_dict() for k, m in modules.items()},
                       "extra": extra or {}}, path)


def load_checkpoint(path: Path, modules: dict[str, Any], fingerprint: dict[str, Any]
                    ) -> tuple[int, dict[str, Any]]:
    """Restore ``modules`` and the RNG from ``path``; returns (step, extra).

    Raises:
        ModelFileError: the checkpoint is unsafe, from another version, or from
            a run with another configuration or training set.
    """
    ck = safe_torch_load(path, "checkpoint")
    if ck.get("format") != "anomem-checkpoint" or ck.get("version") != CHECKPOINT_VERSION:
        raise ModelFileError(f"checkpoint {str(path)!r} is not an anomem checkpoint of version "
                             f"{CHECKPOINT_VERSION}; delete it to start afresh")
    require_checksum(ck, "checkpoint", path)
    if ck.get("fingerprint") != fingerprint:
        raise ModelFileError(f"checkpoint {str(path)!r} belongs to another run (configuration or "
                             f"training data differ); delete it or use another checkpoint folder")
    try:
        for k, m in modules.items():
            m.load_state_dict(ck["state"][k])
        set_rng_state(ck["rng"])
        return int(ck["step"]), dict(ck.get("extra", {}))
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise ModelFileError(f"checkpoint {str(path)!r} is inconsistent ({type(e).__name__}: "
                             f"{e}); delete it to start afresh") from None


def _as_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return images.to(device).float().div_(255)


@torch.no_grad()
def map_batches(model: nn.Module, images: torch.Tensor, opts: RunOptions, fn: Any,
                batch_size: int = 256) -> list[Any]:
    """Apply ``fn(model, x)`` to uint8 ``images`` batch by batch in eval mode."""
    model.eval()
    return [fn(model, _as_float(images[sl], opts.device)) for sl in batches(len(images), batch_size)]
