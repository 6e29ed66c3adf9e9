"""bitnet.cpp as a backend: its libllama.so (built from ../shared/bitnetcpp into the cache on first
use) through the project's cffi binding (bitnetcpp_capi.py), run in a child process like the
llama.cpp reference, so a crash or hang of the fork ends one comparison in a `crashed`/`timeout`
receipt instead of ending the harness.

The parent (BitnetCpp) speaks crossval/backends/isolated.py's JSON-lines protocol with
`python -m crossval.backends.bitnetcpp`; logits travel as .npy files in a private temporary
directory. Requests: load, tokenize, detokenize, logits, generate, compare_pass (greedy or the
fork's own seeded sampler chain), capture (graph tensors through cb_eval, for --localise).
The same fault hook as the llama.cpp child (CROSSVAL_CHILD_FAULT="<fault>@<op>") proves the
failure paths.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from crossval.backends.base import (LAYER_STAGES, Backend, BackendError, BackendSettings, BackendUnavailable,
                                    Capabilities)  # fmt: skip
from crossval.backends.isolated import ChildBackend, serve


class BitnetCpp(ChildBackend, Backend):
    """Parent side: the bitnet.cpp Backend, answered by a child process."""

    name = "bitnetcpp"
    capabilities = Capabilities(sampling=True, capture=True, concurrent=True)
    sampling_chain = "bitnet.cpp"  # the fork's dist draws from top-p's probabilities (engine/sampling.py)

    @classmethod
    def from_settings(cls, model_path, s: BackendSettings, arg: str | None = None) -> "BitnetCpp":
        """`bitnetcpp` runs the model file as given (bitnet.cpp also runs F32/F16/TQ GGUFs of the
        architectures it knows); `bitnetcpp:i2s` runs bitnet.cpp's own I2_S quantization of it —
        made by its llama-quantize from the engine's F32 copy, and refused unless every I2_S matrix
        decodes to exactly the source's values (ternary weights × one scale per tensor), so the
        three engines of `--three-way` see the same weights."""
        if arg is not None and arg.lower() != "i2s":
            raise BackendUnavailable(f"bitnetcpp:{arg}: the only variant is bitnetcpp:i2s")
        if arg is not None:
            model_path = i2s_copy(model_path)
        return cls(model_path, n_ctx=s.n_ctx, threads=s.threads, kv_type=s.kv_type, timeout=s.timeout, progress=s.progress)

    def __init__(self, model_path, n_ctx: int = 2048, threads: int = 1, kv_type: str = "f16", timeout: float = 120.0,
                 env: dict | None = None, progress=None, build=None):  # fmt: skip
        from crossval.bitnetcpp_kit import KitError, ensure_built

        try:
            self.kit = build or ensure_built(progress=progress)
        except KitError as e:
            raise BackendUnavailable(str(e)) from None
        shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self._tmp = tempfile.TemporaryDirectory(prefix="crossval-bitnetcpp-", dir=shm)
        child_env = dict(os.environ if env is None else env)
        self._start([sys.executable, "-m", "crossval.backends.bitnetcpp"], child_env, timeout)
        # n_ctx a multiple of 32: the fork pads the attended KV length to 32 cells, capped at n_ctx
        n_ctx = (int(n_ctx) + 31) // 32 * 32
        self._load_args = dict(lib=str(self.kit.libllama), model_path=str(model_path), n_ctx=n_ctx, threads=threads, kv_type=kv_type)
        self._send_load(**self._load_args)

    def _with_build(self, provenance: dict) -> dict:
        b = self.kit.provenance()
        return dict(provenance, build=b, commit=b["llama_cpp_commit"],
                    version=f"bitnet.cpp {(b['bitnet_commit'] or '')[:12]} (llama.cpp fork {(b['llama_cpp_commit'] or '')[:12]})")  # fmt: skip

    def _npy(self, name: str) -> str:
        if name == "pass":
            return str(Path(self._tmp.name) / name)  # a prefix (isolated.save_arrays)
        return str(Path(self._tmp.name) / (f"{name}.npz" if name == "capture" else f"{name}.npy"))

    # --- Backend ------------------------------------------------------------------------------
    def capture_rows(self, ids: list[int], position: int, stages: tuple[str, ...] = LAYER_STAGES,
                     pattern: str | None = None) -> dict[str, np.ndarray]:  # fmt: skip
        """The fork's named graph tensors (cb_eval) of the given stages ("<stage>-<layer>", the names
        llama.cpp uses), as the row of `position`, for a teacher-forced pass over ids (a separate
        capturing context); `pattern` (a regular expression over tensor names) overrides stages."""
        self.wait_loaded()
        pattern = pattern or r"^(" + "|".join(sorted(stages)) + r")-\d+$"
        out = self._npy("capture")
        self._call("capture", ids=[int(i) for i in ids], position=int(position), pattern=pattern, out=out)
        with np.load(out) as z:
            rows = {k: z[k] for k in z.files}
        os.unlink(out)
        return rows

    def unload(self) -> None:
        """Free the child's model and context (the child keeps running)."""
        self.wait_loaded()
        self._call("unload")

    def reload(self) -> None:
        """Load the model again in the same child (after unload)."""
        self._send_load(**self._load_args)
        self.wait_loaded()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def close(self) -> None:
        if getattr(self, "_proc", None) is not None and not getattr(self, "_closed", False):
            self._closed = True
            self._shutdown()
        if getattr(self, "_tmp", None) is not None:
            self._tmp.cleanup()
            self._tmp = None


def i2s_copy(model_path) -> Path:
    """bitnet.cpp's I2_S quantization of a BitNet GGUF whose matrices it represents exactly."""
    from crossval.bitnetcpp_kit import KitError, quantize_i2s
    from crossval.models import cache_dir
    from engine.convert import cached_float_copy
    from engine.gguf_model import GGUFError, open_gguf
    from engine.quants import I2_S

    try:
        src = open_gguf(model_path)
        if all(t.type != I2_S for t in src.tensors.values()):
            out = quantize_i2s(cached_float_copy(Path(model_path), cache_dir() / "float"))
        else:
            return Path(model_path)
        q = open_gguf(out)
        for name, t in q.tensors.items():
            if t.type == I2_S and not np.array_equal(q.dequantize(name), src.dequantize(name)):
                raise BackendUnavailable(f"bitnetcpp:i2s: {name} is not ternary × one scale per tensor; I2_S would change it")
    except (KitError, GGUFError) as e:
        raise BackendUnavailable(f"bitnetcpp:i2s: {e}") from None
    return out


# --- child side ------------------------------------------------------------------------------
def _provenance(m) -> dict:
    return {
        "name": "bitnet.cpp",
        "version": None,  # the parent names the commits (it knows the kit build)
        "library_sha256": m.library_sha256(),
        "system_info": m.system_info(),
        "kv_type": m.kv_type,
        "threads": m.threads,
    }


def _load(a: dict):
    from crossval.backends.bitnetcpp_capi import BitnetCppError, BitnetCppModel

    try:
        m = BitnetCppModel(a["lib"], a["model_path"], n_ctx=a["n_ctx"], threads=a["threads"], kv_type=a["kv_type"])
    except BitnetCppError as e:
        raise (BackendUnavailable if "cannot use" in str(e) else BackendError)(str(e)) from None
    m._load_args = a
    return m, _provenance(m)


def _capture_model(m, ids: list[int]):
    from crossval.backends.bitnetcpp_capi import BitnetCppModel

    la = m._load_args
    return BitnetCppModel(la["lib"], la["model_path"], n_ctx=max(32, (len(ids) + 32) // 32 * 32), threads=la["threads"],
                          kv_type=la["kv_type"], capture=True)  # fmt: skip


def child_main() -> int:
    return serve(_load, _capture_model, lambda m, chain: m.free_sampler(chain))

if __name__ == "__main__":
    sys.exit(child_main())
