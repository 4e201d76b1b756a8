"""One-off probes and the measurements behind the documented choices (see README.md here).

Each folder answers one question; run its script from the repository root as a
module, e.g. ``python -m experiments.variants.variant_probe --help``.  Scripts
import :mod:`anomem` as an installed library and share the image sets of
:mod:`experiments.tasks`.  CIFAR-10 and Magnetic Tile Defects are read from the
folder named by ``ANOMEM_DATA``.
"""
