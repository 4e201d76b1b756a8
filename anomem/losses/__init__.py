"""Losses of AnoMem as small pure functions, one module per family."""

from anomem.losses.contrasted_memory import (
                                             contrasted_memory_loss,
                                             mem_select,
                                             multiscale_loss,
                                             position_labels,
                                             sample_count,
                                             sample_positions,
                                             variance_loss,
)
from anomem.losses.hinge import double_hinge, position_hinge, sup_loss
from anomem.losses.ntxent import nt_xent

__all__ = ["contrasted_memory_loss", "double_hinge", "mem_select", "multiscale_loss", "nt_xent",
           "position_hinge", "position_labels", "sample_count", "sample_positions", "sup_loss",
           "variance_loss"]
