"""This CPU's instruction-set extensions, and native builds checked against them before use.

llama-cpp-python compiles llama.cpp with -march=native, and the kits (gemma.cpp, bitnet.cpp) build
with -march=native too. A build restored from a cache filled on another machine — CI runners differ,
AVX-512 on one and not the next — dies with SIGILL on the first wide instruction, or (narrower but
different) takes other SIMD routes, so faithful mode would follow another float order. So:

- `key()` names this CPU's ISA for cache keys of native artefacts (`python -m crossval.isa key`,
  used by the workflows in ci/): machine, x86-64 level, and a hash of the extensions that ggml and
  the kits select code on (KEY_FLAGS present in /proc/cpuinfo).
- every build records the extensions it was compiled for, and `check()` compares them with this
  CPU's before the build is used: one the CPU lacks → ForeignBuild, one line, exit 3.
  llama-cpp-python: its library reports its compiled features (`llama_print_system_info`, e.g.
  `AVX512 = 1`), read in a throwaway child process (a build too wide for this CPU may die with
  SIGILL there, which is the same verdict) and cached per library file and CPU.
  Kit builds: `CROSSVAL_ISA.json` written into the build directory when crossval builds it (older
  builds: derived from the kit's BUILD_INFO.json).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from crossval.errors import EXIT_NO_REFERENCE, CrossvalError

# extensions compilers enable with -march=native that ggml, highway or the kits dispatch on
KEY_FLAGS = ("pni", "ssse3", "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512dq", "avx512cd",
             "avx512bw", "avx512vl", "avx512ifma", "avx512vbmi", "avx512_vbmi2", "avx512_vnni", "avx512_bf16",
             "avx512_bitalg", "avx512_vpopcntdq", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")  # fmt: skip
# llama.cpp's llama_print_system_info feature names (ggml-cpu) → /proc/cpuinfo flags
LLAMA_FEATURES = {"SSE3": "pni", "SSSE3": "ssse3", "AVX": "avx", "AVX2": "avx2", "F16C": "f16c", "FMA": "fma", "BMI2": "bmi2",
                  "AVX512": "avx512f", "AVX512_VBMI": "avx512vbmi", "AVX512_VNNI": "avx512_vnni", "AVX512_BF16": "avx512_bf16",
                  "AVX_VNNI": "avx_vnni", "AMX_INT8": "amx_int8"}  # fmt: skip
# highway static targets (the gemma.cpp kit's BUILD_INFO compiler.hwy_static_target) → what each surely needs
HWY_TARGETS = {"SSE4": {"ssse3", "sse4_1", "sse4_2"}, "AVX2": {"avx2", "fma", "f16c", "bmi2"},
               "AVX3": {"avx512f", "avx512vl", "avx512dq", "avx512bw"}}  # fmt: skip
RECORD = "CROSSVAL_ISA.json"


class ForeignBuild(CrossvalError):
    """A native build made for a CPU with extensions this one lacks: one line, exit 3."""

    exit_code = EXIT_NO_REFERENCE


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's flags as /proc/cpuinfo lists them (empty where there is no such file)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def level(flags=None) -> str:
    """The x86-64 micro-architecture level (v1–v4) the flags reach."""
    f = cpu_flags() if flags is None else flags
    if {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= f:
        return "v4"
    if {"avx", "avx2", "bmi2", "f16c", "fma"} <= f:
        return "v3"
    if {"pni", "ssse3", "sse4_1", "sse4_2"} <= f:
        return "v2"
    return "v1"


def key(flags=None) -> str:
    """A cache key part for native builds: e.g. x86_64-v4-3f2a9c1e."""
    f = cpu_flags() if flags is None else flags
    present = sorted(set(KEY_FLAGS) & set(f))
    return f"{platform.machine()}-{level(f)}-{hashlib.sha256(','.join(present).encode()).hexdigest()[:8]}"


def features_from_system_info(system_info: str) -> set[str]:
    """The cpuinfo flags a llama.cpp build was compiled for, from its `NAME = 1` features."""
    out = set()
    for part in system_info.replace("CPU :", "|").split("|"):
        name, _, val = part.partition("=")
        if val.strip() == "1" and name.strip() in LLAMA_FEATURES:
            out.add(LLAMA_FEATURES[name.strip()])
    return out


def check(built_for: set[str], what: str, fix: str) -> None:
    """ForeignBuild when the build needs an extension this CPU lacks."""
    missing = sorted(set(built_for) - cpu_flags())
    if missing and cpu_flags():
        raise ForeignBuild(f"{what} was built for a CPU with {', '.join(missing)}, which this CPU lacks "
                           f"(a cache restored from another machine?): {fix}")  # fmt: skip


# --- kit builds -----------------------------------------------------------------------------------
def record(build_dir: Path) -> None:
    """Write this CPU's extensions into a build directory crossval just built (atomically)."""
    p = Path(build_dir) / RECORD
    tmp = p.with_name(f".{RECORD}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"flags": sorted(set(KEY_FLAGS) & cpu_flags()), "key": key(), "machine": platform.machine()}))
    os.replace(tmp, p)


def recorded(build_dir: Path, info: dict | None = None) -> set[str] | None:
    """The extensions a kit build was made for: its CROSSVAL_ISA.json, else what its BUILD_INFO
    shows (bitnet.cpp: llama.cpp's system_info; gemma.cpp: highway's static target); None if unknown."""
    try:
        return set(json.loads((Path(build_dir) / RECORD).read_text())["flags"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    info = info or {}
    if isinstance(info.get("system_info"), str):
        return features_from_system_info(info["system_info"])
    target = str((info.get("compiler") or {}).get("hwy_static_target") or "")
    order = ["SSE4", "AVX2", "AVX3"]  # each target includes the ones before it
    hit = next((i for i in range(len(order) - 1, -1, -1) if target.startswith(order[i])), None)
    return set().union(*(HWY_TARGETS[t] for t in order[: hit + 1])) if hit is not None else None


def check_kit(build_dir: Path, info: dict, name: str) -> None:
    need = recorded(build_dir, info)
    if need is not None:
        check(need, f"the {name} kit build in {build_dir}", f"delete that directory; it is rebuilt for this CPU on next use")


# --- llama-cpp-python -----------------------------------------------------------------------------
def _llama_lib_files(llama_lib: str | None) -> list[Path]:
    if llama_lib:
        d = Path(llama_lib)
    else:
        import importlib.util

        spec = importlib.util.find_spec("llama_cpp")
        if spec is None or not spec.origin:
            return []
        d = Path(spec.origin).parent / "lib"
    return sorted(p for p in d.glob("*.so*") if p.is_file()) if d.is_dir() else []


def llama_build_flags(llama_lib: str | None = None) -> set[str] | None:
    """The extensions the llama.cpp library (llama-cpp-python's, or LLAMA_CPP_LIB_PATH=llama_lib)
    was compiled for, or None when it cannot be loaded at all (reported elsewhere). Cached per
    library files (path, size, mtime) and CPU under <cache>/isa/."""
    files = _llama_lib_files(llama_lib)
    if not files:
        return None
    st = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    stamp = hashlib.sha256(json.dumps([st, key()]).encode()).hexdigest()[:32]
    from crossval.models import cache_dir

    cached = cache_dir() / "isa" / f"llama-{stamp}.json"
    try:
        return set(json.loads(cached.read_text())["flags"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    env = dict(os.environ)
    if llama_lib:
        env["LLAMA_CPP_LIB_PATH"] = str(llama_lib)
    code = "import sys, llama_cpp; sys.stdout.write(llama_cpp.llama_print_system_info().decode(errors='replace'))"
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    except subprocess.TimeoutExpired:
        return None
    if r.returncode == -signal.SIGILL:
        raise ForeignBuild(f"llama.cpp ({files[0].parent}) dies with SIGILL on this CPU: it was built for another one; {_rebuild()}")
    if r.returncode != 0:
        return None
    flags = features_from_system_info(r.stdout)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"flags": sorted(flags), "system_info": r.stdout.strip()}))
        os.replace(tmp, cached)
    except OSError:
        pass
    return flags


def _rebuild() -> str:
    from crossval.backends.llamacpp import REBUILD

    return f"rebuild it here: {REBUILD}"


def check_llama_cpp(llama_lib: str | None = None) -> None:
    """ForeignBuild before llama.cpp is used when its library was compiled for a wider CPU."""
    flags = llama_build_flags(llama_lib)
    if flags is not None:
        where = f"llama.cpp in {llama_lib}" if llama_lib else "llama-cpp-python's llama.cpp"
        check(flags, where, _rebuild())


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["key"]:
        print(key())
    elif args == ["flags"]:
        print(" ".join(sorted(set(KEY_FLAGS) & cpu_flags())))
    else:
        print("usage: python -m crossval.isa key|flags", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
