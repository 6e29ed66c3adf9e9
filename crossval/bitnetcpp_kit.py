"""The bitnet.cpp reference kit (../shared/bitnetcpp): build it once into the crossval cache, and
quantize GGUFs to I2_S with its own llama-quantize.

The kit compiles microsoft/BitNet and its llama.cpp fork from pinned tarballs (its README). We run
its `build.sh` into
    <cache>/bitnetcpp/<kit hash>/
where the kit hash covers build.sh, the tools and the tarballs' SHA256SUMS (build.sh verifies the
tarballs against it), so an edited kit gets a fresh directory. build.sh keeps its own reuse key
(which adds the CPU flags) in BUILD_INFO.json; a file lock keeps two crossval processes from
building the same directory at once. Provenance (both commits, compiler, CMake flags,
system_info) comes from BUILD_INFO.json.

`quantize_i2s(src)` runs `llama-quantize SRC OUT I2_S 1` — one thread: with more, the kit's README
measured a silently corrupt file — into <cache>/bitnetcpp/<kit hash>/models/, keyed by the
source file's sha256.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from crossval import isa
from crossval.kit_build import build_info, build_once, hash_files, run_build_sh
from crossval.models import cache_dir
from engine.convert import sha256_file

KIT_ENV = "CROSSVAL_BITNETCPP_KIT"


class KitError(RuntimeError):
    """The kit is missing or its build failed; the message is one line a user can act on."""


@dataclass(frozen=True)
class KitBuild:
    dir: Path
    info: dict  # BUILD_INFO.json
    built_s: float | None  # seconds build.sh ran in this process (None: reused)

    @property
    def libllama(self) -> Path:
        return self.dir / "lib" / "libllama.so"

    @property
    def libggml(self) -> Path:
        return self.dir / "lib" / "libggml.so"

    @property
    def quantize_bin(self) -> Path:
        return self.dir / "bin" / "llama-quantize"

    def provenance(self) -> dict:
        """The receipt's backends.<side>.build section: commits, compiler, CMake flags (the library's
        own system_info goes in the section itself)."""
        i = self.info
        return {
            "bitnet_commit": (i.get("bitnet") or {}).get("commit"),
            "llama_cpp_commit": (i.get("llama_cpp") or {}).get("commit"),
            "llama_cpp_repo": (i.get("llama_cpp") or {}).get("repo"),
            "compiler": (i.get("compiler") or {}).get("cxx"),
            "cmake_flags": i.get("cmake_flags"),
            "ggml_native": i.get("GGML_NATIVE"),
            "tl2": i.get("BITNET_X86_TL2"),
            "build_dir": str(self.dir),
        }


def kit_path() -> Path:
    """The kit: $CROSSVAL_BITNETCPP_KIT, else ../shared/bitnetcpp next to the repository."""
    env = os.environ.get(KIT_ENV)
    p = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "bitnetcpp"
    if not (p / "build.sh").is_file():
        raise KitError(f"bitnet.cpp kit not found at {p} (set {KIT_ENV} to the kit directory)")
    return p


def kit_hash(kit: Path) -> str:
    """blake3 over build.sh, SHA256SUMS (which pins the tarballs) and the tools."""
    return hash_files(kit, [kit / "build.sh", kit / "SHA256SUMS"] + sorted(p for p in (kit / "tools").rglob("*") if p.is_file()))


def build_dir(kit: Path | None = None) -> Path:
    return cache_dir() / "bitnetcpp" / kit_hash(kit or kit_path())


def _find(out: Path, built_s: float | None) -> KitBuild | None:
    info = build_info(out)
    if info is None:
        return None
    outs = info.get("outputs") or []
    if not outs or not all((out / p).is_file() for p in outs):
        return None
    b = KitBuild(out, info, built_s)
    if not (b.libllama.is_file() and b.quantize_bin.is_file()):
        return None
    isa.check_kit(out, info, "bitnet.cpp")  # built for a wider CPU (a restored cache): exit 3 before use
    return b


def ensure_built(jobs: int | None = None, progress=None) -> KitBuild:
    """The kit built into the cache (reused when present). progress(line) receives build.sh's
    step lines while it runs (about 1.5–3 minutes the first time on 2 cores)."""
    progress = progress or (lambda line: None)
    kit = kit_path()
    out = build_dir(kit)

    def build() -> KitBuild:
        cmd = ["bash", str(kit / "build.sh"), "--out", str(out), "--jobs", str(jobs or os.cpu_count() or 2)]
        found = _find(out, run_build_sh(cmd, out, _stage, progress, _failed))
        if not found:
            raise KitError(f"bitnet.cpp kit build finished but {out / 'BUILD_INFO.json'} does not list its outputs")
        return found

    return build_once(out, lambda: _find(out, None), build)


def _stage(line: str) -> str | None:
    """build.sh's step lines ("build.sh: <step>", not its errors) → the step."""
    return line[len("build.sh: ") :] if line.startswith("build.sh: ") and "error" not in line else None


def _failed(rc: int, tail: list[str]) -> KitError:
    err = next((ln for ln in reversed(tail) if "error" in ln.lower()), tail[-1] if tail else "no output")
    return KitError(f"bitnet.cpp kit build failed (build.sh exit {rc}): {err.strip()}")


def quantize_i2s(src: Path, build: KitBuild | None = None, timeout: float = 600.0) -> Path:
    """src (an F32/F16 BitNet GGUF with row lengths that are multiples of 128) → its I2_S copy made
    by the kit's llama-quantize with one thread, cached by the source's sha256."""
    from engine.gguf_model import GGUFError, open_gguf

    build = build or ensure_built()
    src = Path(src)
    try:
        g = open_gguf(src)
    except GGUFError as e:
        raise KitError(str(e)) from None
    bad = sorted(n for n, t in g.tensors.items() if len(t.ne) == 2 and n != "token_embd.weight" and t.ne[0] % 128)
    g.close()
    if bad:
        raise KitError(f"{src.name}: I2_S needs row lengths that are multiples of 128 ({bad[0]} has {g.tensors[bad[0]].ne[0]})")
    out_dir = build.dir / "models"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"{src.stem}-{sha256_file(src)[:16]}.I2_S.gguf"
    if out.is_file():
        return out
    with open(out_dir / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.is_file():
            return out
        tmp = out.with_suffix(".tmp")
        try:
            r = subprocess.run([str(build.quantize_bin), str(src), str(tmp), "I2_S", "1"], capture_output=True, text=True,
                               errors="replace", timeout=timeout)  # fmt: skip
        except subprocess.TimeoutExpired:
            tmp.unlink(missing_ok=True)
            raise KitError(f"llama-quantize timed out after {timeout:g} s on {src.name}") from None
        if r.returncode != 0 or not tmp.is_file():
            tmp.unlink(missing_ok=True)
            last = ([ln for ln in (r.stderr + r.stdout).splitlines() if ln.strip()] or ["no output"])[-1]
            raise KitError(f"llama-quantize failed on {src.name} (exit {r.returncode}): {last.strip()[:200]}")
        os.replace(tmp, out)
    return out
