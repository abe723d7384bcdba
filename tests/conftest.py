"""Shared fixtures: devices, the shared datasets, and small random CSR matrices."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

import recfast

# Tests check correctness, never speed: on a loaded 2-core machine Hypothesis's timing checks
# (deadlines, slow-generation health checks) would fail tests for being slow.
settings.register_profile("recfast", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("recfast")

DATA_DIR = Path(os.environ.get("RECFAST_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))

DEVICES = ["cpu"] + (["cuda"] if recfast.cuda_available() else [])


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    """Each op's parity tests run on the CPU, and on CUDA where recfast's CUDA kernels can run."""
    return request.param


requires_cuda = pytest.mark.skipif(not recfast.cuda_available(), reason="needs a GPU and recfast._C_cuda")


@pytest.fixture
def data_dir() -> Path:
    """``../shared/data``; tests that read it skip on machines without it."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"shared datasets not found at {DATA_DIR}")
    return DATA_DIR


def random_csr(
    n_rows: int,
    n_cols: int,
    density: float,
    *,
    seed: int = 0,
    index_dtype: torch.dtype = torch.int32,
    values: bool = False,
) -> recfast.CSR:
    """A random CSR matrix with sorted unique rows (a building block for many tests)."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n_rows, n_cols)) < density
    rows, cols = np.nonzero(mask)
    vals = torch.from_numpy(rng.random(rows.size).astype(np.float32)) if values else None
    m = recfast.CSR.from_coo(torch.from_numpy(rows), torch.from_numpy(cols), vals, shape=(n_rows, n_cols))
    if index_dtype != m.indices.dtype:
        m = recfast.CSR(m.indptr, m.indices.to(index_dtype), m.shape, m.values)
    return m
