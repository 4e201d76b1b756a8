"""Suite-wide settings and shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from anomem.data.dataset import LabelledSplit
from anomem.data.digits import load_digits_split

#: The conventional place of the benchmark archives: a ``shared/data`` folder beside the
#: checkout.  The package knows no data folder (``anomem.data.locate`` reads only
#: ``ANOMEM_DATA``), so the suite names this one when ``ANOMEM_DATA`` is unset; tests
#: that need an archive skip, saying which, where it is absent.
BESIDE_CHECKOUT = Path(__file__).resolve().parents[2] / "shared" / "data"
if not os.environ.get("ANOMEM_DATA") and BESIDE_CHECKOUT.is_dir():
    os.environ["ANOMEM_DATA"] = str(BESIDE_CHECKOUT)


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One intra-op thread: the suite's models are tiny, and on a shared 2-core machine
    (CI, or tests beside other jobs) more threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits() -> LabelledSplit:
    """scikit-learn's digits as uint8 (N, 8, 8) images, the stratified split of seed 0.

    Shared by the whole session: tests read it and never write into its arrays.
    """
    return load_digits_split(seed=0)


@pytest.fixture(scope="session")
def zeros(digits) -> np.ndarray:
    """The first 100 training images of digit 0: a small normal class for quick fits."""
    return digits.x_train[digits.y_train == 0][:100]
