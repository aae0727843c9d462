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


@pytest.fixture(scope="session")
def env(shared_xla_cache) -> dict:
    """Environment for `dip-jax` subprocesses: this session's XLA cache, no compile-cache override."""
    env = dict(os.environ)
    env["JAX_COMPILATION_CACHE_DIR"] = str(shared_xla_cache)
    env.pop("DIP_JAX_COMPILE_CACHE", None)
    return env


@pytest.fixture(scope="session", autouse=True)
def _in_process_xla_cache(shared_xla_cache):
    """The in-process fits use the shared cache too: both workers fit the same tiny problems."""
    import jax

    previous = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(shared_xla_cache))
    yield
    jax.config.update("jax_compilation_cache_dir", previous)


# Tests that compile several fits (about 30-130 s each on 2 cores). They are
# started first, so pytest-xdist's workers do not end the run with one long
# test left on one of them (longest first balances the two workers).
_LONG_TESTS = (
    "test_every_experiment_in_quick_mode",
    "test_batch_restores_a_folder",
    "test_lbfgs_after_adam_warmup",
    "test_vmapped_fit_equals_separate_fits",
    "test_inpainting_operator_and_optimising_the_input",
    "test_four_device_fit_equals",
    "test_demo_quick_writes",
    "test_denoise_interrupted_and_resumed",
    "test_eager_jit_vmap_agree_and_batchnorm",
    "test_inpaint_with_a_mask_file",
    "test_restarts_are_independent",
    "test_denoise_killed_once",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        for i, name in enumerate(_LONG_TESTS):
            if name in item.name:
                return i
        return len(_LONG_TESTS)

    items.sort(key=rank)
