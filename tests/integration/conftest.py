"""Fixtures of the integration tests: a real single-node SLURM cluster (``slurm_cluster.py``)."""

from __future__ import annotations

import time

import pytest
from slurm_cluster import SlurmCluster, Unavailable, ensure_installed, start


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> SlurmCluster:
    """A single-node SLURM on this machine, installed when missing (skipped with the reason where it cannot be),
    its daemons stopped by pid at the end. SLURM_CONF points every client here, tgdfer and its tasks included."""
    try:
        installed = ensure_installed()
    except Unavailable as exc:
        pytest.skip(f"no SLURM cluster: {exc}")
    started = time.perf_counter()
    cluster = start(tmp_path_factory.mktemp("slurm"))  # installed but not starting: an error, not a skip
    print(f"\nSLURM cluster: installed in {installed:.1f} s, started in {time.perf_counter() - started:.1f} s")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in cluster.env.items():
            patch.setenv(name, value)
        try:
            yield cluster
        finally:
            cluster.stop()
