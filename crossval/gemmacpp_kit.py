"""The gemma.cpp reference kit (../shared/gemmacpp): build it once into the crossval cache.

The kit compiles upstream gemma.cpp from bundled sources and converts a Gemma-3-270M GGUF into
gemma.cpp's `.sbs` weights (its README). We run its `build.sh` into
    <cache>/gemmacpp/<kit hash>-<patched|upstream>/
where the kit hash covers build.sh, the patches, the tools and the source checksums, so an edited
kit gets a fresh directory. Several GGUFs share one build; each gets its own `.sbs`, recorded with
the GGUF's sha256 in BUILD_INFO.json — a build is reused only when that sha256 matches the GGUF
asked for. A file lock keeps two crossval processes from building the same directory at once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from crossval import isa
from crossval.kit_build import build_info, build_once, hash_files, run_build_sh
from crossval.models import cache_dir
from engine.convert import sha256_file

KIT_ENV = "CROSSVAL_GEMMACPP_KIT"
PY_PACKAGES = ("numpy", "gguf", "sentencepiece", "protobuf")  # what the kit's converter imports


class KitError(RuntimeError):
    """The kit is missing or its build failed; the message is one line a user can act on."""


@dataclass(frozen=True)
class KitBuild:
    dir: Path
    variant: str  # "patched" | "upstream"
    sbs: Path
    tokenizer: Path
    driver: Path  # bin/gemma_greedy
    capi: Path  # lib/libgemma_capi.so
    info: dict  # BUILD_INFO.json
    weights: dict  # BUILD_INFO's entry for this GGUF
    built_s: float | None  # seconds build.sh ran in this process (None: reused)

    def provenance(self) -> dict:
        """The receipt's view of this build (gemma.cpp commit, patches, compiler, SIMD target)."""
        i = self.info
        comp = i.get("compiler") or {}
        return {
            "variant": self.variant,
            "gemma_cpp_commit": ((i.get("sources") or {}).get("gemma.cpp") or {}).get("commit"),
            "highway_commit": ((i.get("sources") or {}).get("highway") or {}).get("commit"),
            "patches": [p.get("name") for p in i.get("patches_applied") or []],
            "compiler": comp.get("cxx"),
            "march_native": comp.get("march_native"),
            "simd_target": comp.get("hwy_static_target"),
            "compile_flags": i.get("tool_compile_flags"),
            "weights_sha256": self.weights.get("sbs_sha256"),
            "gguf_sha256": self.weights.get("gguf_sha256"),
            "build_dir": str(self.dir),
        }


def kit_path() -> Path:
    """The kit: $CROSSVAL_GEMMACPP_KIT, else ../shared/gemmacpp next to the repository."""
    env = os.environ.get(KIT_ENV)
    p = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "gemmacpp"
    if not (p / "build.sh").is_file():
        raise KitError(f"gemma.cpp kit not found at {p} (set {KIT_ENV} to the kit directory)")
    return p


def kit_hash(kit: Path) -> str:
    """blake3 over the kit's own files; the source tarballs enter through sources/SHA256SUMS
    (build.sh verifies them against it)."""
    files = [kit / "build.sh", kit / "sources" / "SHA256SUMS"]
    files += sorted(p for d in ("patches", "tools") for p in (kit / d).rglob("*") if p.is_file())
    return hash_files(kit, files)


def build_dir(patched: bool = True, kit: Path | None = None) -> Path:
    kit = kit or kit_path()
    return cache_dir() / "gemmacpp" / f"{kit_hash(kit)}-{'patched' if patched else 'upstream'}"


def _find(out: Path, gguf_sha: str, variant: str, built_s: float | None) -> KitBuild | None:
    info = build_info(out)
    if info is None or info.get("variant") != variant:
        return None
    for w in info.get("weights") or []:
        if w.get("gguf_sha256") == gguf_sha:
            b = KitBuild(out, variant, out / w["sbs"], out / w["tokenizer"], out / "bin" / "gemma_greedy",
                         out / "lib" / "libgemma_capi.so", info, w, built_s)  # fmt: skip
            if all(p.is_file() for p in (b.sbs, b.tokenizer, b.driver, b.capi)):
                isa.check_kit(out, info, "gemma.cpp")  # built for a wider CPU (a restored cache): exit 3 before use
                return b
    return None


def built_simd_target() -> str | None:
    """The Highway target of the kit as already built on this machine (BUILD_INFO.json), without
    building: the target engine mode bf16 reproduces. None when no build exists yet."""
    try:
        kit = kit_path()
    except KitError:
        return None
    for patched in (True, False):
        info = build_info(build_dir(patched, kit))
        if info is None:
            continue
        target = (info.get("compiler") or {}).get("hwy_static_target")
        if target:
            return str(target)
    return None


def gemmacpp_workers(num_threads: int) -> int:
    """The worker count gemma.cpp's thread pools get for --num_threads (its driver reports it as
    "workers"; FlashAttention tiles by it): the threads, capped at the processors this process may
    use (util/threading.cc NestedPools with one cluster), all of them for 0. gemma.cpp counts one
    processor per physical core (util/topology.cc skips SMT siblings); this counts logical ones, so
    on an SMT host asked for more threads than it has cores the two differ."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(num_threads, cores) if num_threads > 0 else cores


def missing_python_packages(python: str = sys.executable) -> list[str]:
    code = "import importlib.util,sys;print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m if m!='protobuf' else 'google.protobuf') is None))"
    r = subprocess.run([python, "-c", code, *PY_PACKAGES], capture_output=True, text=True)
    return r.stdout.split()


def ensure_built(gguf: Path, patched: bool = True, jobs: int | None = None, progress=None) -> KitBuild:
    """The kit built for this GGUF (reused when cached). progress(line) receives build.sh's
    stage lines while it runs (a few minutes the first time on 2 cores)."""
    progress = progress or (lambda line: None)
    kit = kit_path()
    gguf = Path(gguf)
    if not gguf.is_file():
        raise KitError(f"GGUF not found: {gguf}")
    variant = "patched" if patched else "upstream"
    gguf_sha = sha256_file(gguf)
    out = build_dir(patched, kit)

    def build() -> KitBuild:
        missing = missing_python_packages()
        if missing:
            raise KitError(f"the gemma.cpp kit's GGUF converter needs {' '.join(missing)}: "
                           f"{sys.executable} -m pip install {' '.join(missing)}  (or pip install -e '.[gemmacpp]')")  # fmt: skip
        cmd = ["bash", str(kit / "build.sh"), "--out", str(out), "--gguf", str(gguf.resolve()), "--python", sys.executable,
               "--jobs", str(jobs or os.cpu_count() or 2)]  # fmt: skip
        if not patched:
            cmd.append("--no-patches")
        built_s = run_build_sh(cmd, out, _stage, progress, lambda rc, tail: _failed(rc, tail, out))
        found = _find(out, gguf_sha, variant, built_s)
        if not found:
            raise KitError(f"gemma.cpp kit build finished but {out / 'BUILD_INFO.json'} lists no weights for {gguf.name}")
        return found

    return build_once(out, lambda: _find(out, gguf_sha, variant, None), build)


def _stage(line: str) -> str | None:
    """build.sh's stage lines ("[build.sh] <stage>") → the stage."""
    return line[len("[build.sh] ") :] if line.startswith("[build.sh]") else None


def _failed(rc: int, tail: list[str], out: Path) -> KitError:
    err = next((ln for ln in tail if "error" in ln.lower()), tail[-1] if tail else "no output")
    return KitError(f"gemma.cpp kit build failed (build.sh exit {rc}): {err.strip()} — logs in {out / 'logs'}")
