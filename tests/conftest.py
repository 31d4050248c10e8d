"""Shared fixtures. The real facades pairs live beside the checkout in ../shared."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The README's rule: $P2P_FACADES, else facades/ in $P2P_DATA (the folder `make` and
# p2p-train read datasets from), else ../shared/datasets/facades beside the checkout.
FACADES = Path(os.environ.get("P2P_FACADES") or (
    Path(os.environ["P2P_DATA"]) / "facades" if os.environ.get("P2P_DATA")
    else REPO.parent / "shared" / "datasets" / "facades"))


@pytest.fixture(scope="session")
def facades() -> Path:
    """The facades dataset folder (train/ and val/, 512x256 A|B JPEGs)."""
    if not (FACADES / "val").is_dir():
        pytest.fail(f"facades dataset not found at {FACADES}; set P2P_DATA to the folder "
                    "that holds facades/ (or P2P_FACADES to facades/ itself)")
    return FACADES


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nobody listens on (connections are refused): no network."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def session_cache(tmp_path_factory, monkeypatch):
    """$P2P_CACHE in this test session's temp folder (shared by the tests that use it, so a
    compiled model is reused): the engine's caches never land in the user's ~/.cache."""
    monkeypatch.setenv("P2P_CACHE", str(tmp_path_factory.getbasetemp() / "p2p-cache"))
