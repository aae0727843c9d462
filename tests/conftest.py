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


@pytest.fixture(scope="session")
def shared_xla_cache(tmp_path_factory) -> pathlib.Path:
    """One persistent XLA compilation cache for every process of this test session.

    Under pytest-xdist each worker has its own base temp folder; their common
    parent is shared, so the quick experiments, the CLI subprocesses and the
    workers compile each distinct problem once per session, not once per worker.
    """
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / "dip_jax_xla_cache"
    path.mkdir(parents=True, exist_ok=True)
    return path
