"""Stage 2 anomaly-distance losses (Eq. 11-12); y = 1 normal, y = 0 anomaly."""

from __future__ import annotations

import torch


def double_hinge(d: torch.Tensor, y: torch.Tensor, margin: float = 2.0) -> torch.Tensor:
    """Eq. 11: l(d, y) = y * max(d - 1/M, 0) + (1 - y) * max(M - d, 0), elementwise."""
    y = y.to(d.dtype)
    return y * torch.clamp(d - 1.0 / margin, min=0) + (1 - y) * torch.clamp(margin - d, min=0)


def sup_loss(distances: torch.Tensor, y: torch.Tensor, margin: float = 2.0) -> torch.Tensor:
    """Eq. 12: L_SUP = 1/(S*B) sum_k sum_s l(d_k^(s), y_k) for distances of shape (S, B)."""
    return double_hinge(distances, y.unsqueeze(0), margin).mean()
