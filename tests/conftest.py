"""Shared test helpers."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REFDATA = REPO.parent / "shared" / "refdata"


@pytest.fixture(scope="session")
def refdata() -> Path:
    if not REFDATA.is_dir():
        pytest.skip(f"reference data not found at {REFDATA} (expected ../shared/refdata beside the repo)")
    return REFDATA


@pytest.fixture
def python_sigint():
    """Python's own Ctrl-C handler for the test. A process started in the background by a non-interactive
    shell inherits SIGINT ignored, and Python then installs no handler, so SIGINT would do nothing."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)
