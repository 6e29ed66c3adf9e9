from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# The engine's numpy paths run in the test process: one BLAS thread, as `crossval` commands set it
# (crossval/options.py). A multi-threaded OpenBLAS busy-waits for cores a child process (llama.cpp,
# gemma.cpp, a served engine) is using, and a float-mode pass then runs 10-100x slower. The kernel
# selection (OPENBLAS_CORETYPE) is left as the machine has it. limit_blas loads numpy first:
# threadpoolctl only reaches the BLAS libraries already loaded.
from crossval.process import limit_blas  # noqa: E402

assert limit_blas(1) in (1, None)

from tiny_models import TINY_MODELS, write_tiny_model  # noqa: E402


def _has_llamacpp() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except Exception:
        return False
    return True


HAS_LLAMACPP = _has_llamacpp()
needs_llamacpp = pytest.mark.skipif(not HAS_LLAMACPP and not os.environ.get("CI"), reason="llama-cpp-python not installed")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    """tiny_model(name) → path of a tiny synthetic GGUF from TINY_MODELS, written once per session."""

    def get(name: str) -> Path:
        p = tiny_dir / f"{name}.gguf"
        if not p.exists():
            write_tiny_model(p, **TINY_MODELS[name])
        return p

    return get


def real_model_path(name: str) -> Path:
    """Path of a cached real model; skip (locally) or fail (CI=true) when it is missing."""
    from crossval.models import model_path

    p = model_path(name)
    if not p.exists():
        msg = f"real model {name} not fetched (run `crossval models fetch`)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return p
