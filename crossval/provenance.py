"""Provenance for receipts: hashes of prompts and files, model and tokenizer facts, environment."""

from __future__ import annotations

import os
import platform
import sys
from collections import Counter
from functools import lru_cache
from pathlib import Path

from blake3 import blake3

# Environment variables that change numerics or threading of either engine.
NUMERIC_ENV_VARS = (
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "GGML_NUM_THREADS",
    "LLAMA_CPP_LIB_PATH", "CROSSVAL_DETERMINISTIC", "PYTHONHASHSEED", "OPENBLAS_CORETYPE",
)  # fmt: skip


def blake3_text(text: str) -> str:
    return blake3(text.encode("utf-8")).hexdigest()


@lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    from engine.convert import sha256_file as _hash

    return _hash(path)


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file; for a cached real model, the digest its fetch verified and recorded
    (crossval/models.py writes <file>.json) when size and modification time still agree."""
    import json

    st = os.stat(path)
    manifest = Path(str(path) + ".json")
    try:
        rec = json.loads(manifest.read_text())
        if rec.get("size") == st.st_size and manifest.stat().st_mtime_ns >= st.st_mtime_ns and len(rec.get("sha256", "")) == 64:
            return rec["sha256"]
    except (OSError, ValueError):
        pass
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def model_facts(g, path: str | os.PathLike, name: str | None = None) -> dict:
    """`model` receipt section from an opened engine.gguf_model.GGUFFile."""
    types = Counter(t.type.name for t in g.tensors.values())
    ft = g.get("general.file_type")
    return {
        "name": name,
        "path": str(path),
        "sha256": sha256_file(path),
        "size": os.path.getsize(path),
        "arch": g.arch,
        "file_type": int(ft) if ft is not None else None,
        "tensor_types": dict(sorted(types.items())),
    }


def float_weights(g) -> bool:
    """True when every matrix of the model is stored as a float type (F32/F16/BF16)."""
    return all(t.type.name in ("F32", "F16", "BF16") for t in g.tensors.values() if len(t.ne) >= 2)


def tokenizer_fingerprint(g, vocab=None) -> dict:
    """`tokenizer` receipt facts (engine/tokenizer/fingerprint.py documents the blob hash)."""
    from engine.tokenizer.fingerprint import fingerprint

    fp = fingerprint(g, vocab)
    ct = g.get("tokenizer.chat_template")
    fp["chat_template_blake3"] = blake3_text(ct) if ct else None
    return fp


def _libc() -> str:
    name, ver = platform.libc_ver()
    return f"{name} {ver}".strip() or "unknown"


_cpu_probe: list = []  # the py-cpuinfo child started by start_cpu_probe, until _cpu() collects it


def start_cpu_probe() -> None:
    """Start py-cpuinfo's query now, so that the environment section finds it answered: its
    get_cpu_info runs `python -m cpuinfo --json` in a child process (which asks lscpu and CPUID
    in children of its own) and takes a second or more. Its own session, registered: an interrupt
    kills it (cancel_cpu_probe)."""
    import subprocess

    from crossval import signals

    if _cpu_probe or _cpu.cache_info().currsize:
        return
    with signals.held():
        try:
            p = subprocess.Popen([sys.executable, "-m", "cpuinfo", "--json"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        except OSError:
            return
        signals.register(p.pid)
        _cpu_probe.append(p)


def cancel_cpu_probe() -> None:
    """Kill a probe no one collected (a run that ended before its first receipt)."""
    import signal

    from crossval import signals

    while _cpu_probe:
        p = _cpu_probe.pop()
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        p.communicate()
        signals.unregister(p.pid)


@lru_cache(maxsize=1)
def _cpu() -> dict:
    import json

    from crossval.signals import held, unregister

    try:
        start_cpu_probe()
        p = _cpu_probe.pop()
        with held():  # an interrupt waits for the probe (and its children), leaving no orphan
            out, _ = p.communicate()
        unregister(p.pid)
        info = json.loads(out) if p.returncode == 0 else {}  # what cpuinfo.get_cpu_info() returns
        flags = sorted(f for f in info.get("flags", []) if f.startswith(("avx", "sse4", "fma", "f16c", "amx", "vnni", "bmi")))
        return {"model": info.get("brand_raw") or platform.processor(), "flags": flags}
    except Exception:  # py-cpuinfo can fail in odd sandboxes; provenance must not
        return {"model": platform.processor() or "unknown", "flags": []}


@lru_cache(maxsize=1)
def _blas() -> list[dict]:
    """The BLAS libraries loaded in this process (threadpoolctl): which build, version and — for
    OpenBLAS — the core type whose kernels it picked for this CPU (OPENBLAS_CORETYPE overrides it).
    No verdict depends on them (every tight comparison runs in the native kernels); recorded so a
    float-mode difference between machines can be traced to its BLAS."""
    try:
        import numpy  # noqa: F401 — loads its BLAS first
        from threadpoolctl import threadpool_info

        return [{"library": i.get("internal_api"), "version": i.get("version"), "core_type": i.get("architecture"),
                 "threading_layer": i.get("threading_layer"), "num_threads": i.get("num_threads"),
                 "file": Path(i.get("filepath") or "").name or None}
                for i in threadpool_info() if i.get("user_api") == "blas"]  # fmt: skip
    except Exception:  # threadpoolctl can fail on exotic builds; provenance must not
        return []


def environment(threads: int) -> dict:
    import numpy

    from crossval.process import blas_threads

    return {
        "os": platform.system(),
        "kernel": platform.release(),
        "libc": _libc(),
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "blas": _blas(),
        "machine": platform.machine(),
        "cpu_model": _cpu()["model"],
        "cpu_flags": _cpu()["flags"],
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "blas_threads": blas_threads(),
        "env": {k: os.environ[k] for k in NUMERIC_ENV_VARS if k in os.environ},
    }


def environment_section(threads: int) -> dict:
    """The `environment` section every receipt kind carries: machine, libraries, threads (the
    BLAS pool's as threadpoolctl reports it), numeric environment variables, crossval's version."""
    import crossval

    return {**environment(threads), "crossval_version": crossval.__version__}
