"""Fixtures of the python suite: small engines (host-only, or host over an
NVMe block file in the test's temporary directory) that every test closes,
so a pin a test forgot shows up as a FailedPreconditionError at teardown."""

import gc

import pytest

import strata

# Small blocks and a small host tier, so a few dozen blocks reach NVMe.
BLOCK = 64 << 10
HOST = 16 * BLOCK


@pytest.fixture
def nvme_engine(tmp_path):
    engine = strata.Engine(host_bytes=HOST, block_bytes=BLOCK,
                           nvme_path=str(tmp_path / "nvme"),
                           pin_wait_timeout=10, io_timeout=10)
    yield engine
    gc.collect()  # views in reference cycles of a failed test
    engine.close()


@pytest.fixture
def host_engine():
    engine = strata.Engine(tiers=("host",), host_bytes=HOST, block_bytes=BLOCK)
    yield engine
    gc.collect()
    engine.close()
