import os
import pathlib

# Tests check numerics, not speed: XLA's CPU backend compiles ~2.5x faster
# without LLVM optimisation, and compilation dominates this suite's time.
# Must be set before jax is imported (subprocess tests inherit it).
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import pytest  # noqa: E402

GOLDEN = pathlib.Path(__file__).parent / "golden"


@pytest.fixture(scope="session")
def golden_dir() -> pathlib.Path:
    return GOLDEN
