"""Shared test settings: offline hubs, one CPU thread per test process, the real data root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# An accidental hub download must fail at once instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(max(1, int(os.environ.get("MEDBENCH_TEST_THREADS", "2"))))


def real_data_root() -> Path | None:
    """Return `MEDBENCH_DATA_DIR` if it holds the shared real datasets, else `None`."""
    root = os.environ.get("MEDBENCH_DATA_DIR")
    if root and Path(root, "kvasir_seg").is_dir():
        return Path(root)
    return None


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data root; CI must have it, elsewhere tests that need it are skipped."""
    root = real_data_root()
    if root is None:
        if os.environ.get("CI"):
            pytest.fail("MEDBENCH_DATA_DIR must point at the real datasets in CI.")
        pytest.skip("MEDBENCH_DATA_DIR does not point at the real datasets.")
    return root
