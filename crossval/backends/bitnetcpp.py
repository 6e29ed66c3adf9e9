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

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from crossval.backends.base import (LAYER_STAGES, Backend, BackendSettings, BackendUnavailable, Capabilities, ComparePass,
                                    GenerateResult)  # fmt: skip
from crossval.backends.isolated import PROTOCOL, ChildProcess, _fault


class BitnetCpp(ChildProcess, Backend):
    """Parent side: the bitnet.cpp Backend, answered by a child process."""

    name = "bitnetcpp"
    capabilities = Capabilities(sampling=True, capture=True, concurrent=True)

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
        self._t0 = time.perf_counter()
        # n_ctx a multiple of 32: the fork pads the attended KV length to 32 cells, capped at n_ctx
        n_ctx = (int(n_ctx) + 31) // 32 * 32
        self._load_args = dict(lib=str(self.kit.libllama), model_path=str(model_path), n_ctx=n_ctx, threads=threads, kv_type=kv_type)
        self._send("load", **self._load_args)
        self._info = None

    def wait_loaded(self) -> None:
        if self._info is None:
            self._info = self._receive()
            self.load_s = time.perf_counter() - self._t0
            self.n_vocab = self._info["n_vocab"]
            b = self.kit.provenance()
            self._provenance = dict(self._info["provenance"], build=b, commit=b["llama_cpp_commit"],
                                    version=f"bitnet.cpp {(b['bitnet_commit'] or '')[:12]} (llama.cpp fork {(b['llama_cpp_commit'] or '')[:12]})")  # fmt: skip

    def _npy(self, name: str) -> str:
        return str(Path(self._tmp.name) / (f"{name}.npz" if name in ("pass", "capture") else f"{name}.npy"))

    # --- Backend ------------------------------------------------------------------------------
    def tokenize(self, text: str, add_bos: bool = True, parse_special: bool = False) -> list[int]:
        self.wait_loaded()
        return self._call("tokenize", text=text, add_bos=add_bos, parse_special=parse_special)

    def detokenize(self, ids: list[int]) -> str:
        self.wait_loaded()
        return self._call("detokenize", ids=[int(i) for i in ids])

    def logits(self, ids: list[int]) -> np.ndarray:
        self.wait_loaded()
        out = self._npy("logits")
        self._call("logits", ids=[int(i) for i in ids], out=out)
        arr = np.load(out)
        os.unlink(out)
        return arr

    def generate(self, ids: list[int], steps: int) -> GenerateResult:
        self.wait_loaded()
        out = self._npy("gen")
        r = self._call("generate", ids=[int(i) for i in ids], steps=steps, out=out)
        arr = None
        if steps > 0:
            arr = np.load(out)
            os.unlink(out)
        return GenerateResult(r["tokens"], arr, r["seconds"])

    def compare_pass(self, ids: list[int], steps: int, forced: list[int] | None = None, sampling=None) -> ComparePass:
        self.start_compare_pass(ids, steps, forced, sampling)
        return self.finish_compare_pass()

    def start_compare_pass(self, ids: list[int], steps: int, forced: list[int] | None = None, sampling=None) -> None:
        """Start a compare_pass in the child (greedy, or the fork's own seeded sampler chain) and
        return at once (finish_compare_pass waits)."""
        self._send_ready("compare_pass", ids=[int(i) for i in ids], steps=steps, forced=[int(t) for t in forced or []],
                         out=self._npy("pass"), sampling=None if sampling is None else vars(sampling))  # fmt: skip

    def finish_compare_pass(self) -> ComparePass:
        r = self._receive()
        out = self._npy("pass")
        with np.load(out) as z:
            arrs = {k: z[k] for k in z.files}
        os.unlink(out)
        return ComparePass(arrs["prompt"], r["tokens"], arrs.get("steps"), arrs.get("forced"), r["seconds"])

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

    def provenance(self) -> dict:
        self.wait_loaded()
        return self.describe(**self._provenance)

    def unload(self) -> None:
        """Free the child's model and context (the child keeps running)."""
        self.wait_loaded()
        self._call("unload")

    def reload(self) -> None:
        """Load the model again in the same child (after unload)."""
        self._info = None
        self._t0 = time.perf_counter()
        self._send("load", **self._load_args)
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


def child_main() -> int:
    # the protocol gets a private copy of fd 1; fd 1 (what the C library prints to) goes to stderr
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(ok: bool, result=None, error: str | None = None, unavailable: bool = False):
        msg = {"protocol": PROTOCOL, "ok": ok}
        if ok:
            msg["result"] = result
        else:
            msg["error"], msg["unavailable"] = error, unavailable
        out.write(json.dumps(msg) + "\n")
        out.flush()

    from crossval.backends.bitnetcpp_capi import BitnetCppError, BitnetCppModel

    m = None
    for line in sys.stdin:
        try:
            req = json.loads(line)
            op, a = req["op"], req.get("args", {})
        except (ValueError, KeyError):
            reply(False, error="malformed request")
            continue
        _fault(op, out)
        try:
            if op == "close":
                break
            if op == "unload":  # free the model and its context (lifecycle tests: load/generate/unload cycles)
                if m is not None:
                    m.close()
                    m = None
                reply(True, {"ok": True})
                continue
            if op == "load":
                if m is not None:
                    m.close()
                    m = None
                try:
                    m = BitnetCppModel(a["lib"], a["model_path"], n_ctx=a["n_ctx"], threads=a["threads"], kv_type=a["kv_type"])
                except BitnetCppError as e:
                    reply(False, error=str(e), unavailable="cannot use" in str(e))
                    continue
                m._load_args = a
                reply(True, {"n_vocab": m.n_vocab, "provenance": _provenance(m)})
            elif m is None:
                reply(False, error=f"{op} before load")
            elif op == "tokenize":
                reply(True, m.tokenize(a["text"], a["add_bos"], a["parse_special"]))
            elif op == "detokenize":
                reply(True, m.detokenize(a["ids"]))
            elif op == "logits":
                np.save(a["out"], m.logits(a["ids"]))
                reply(True, {"ok": True})
            elif op == "generate":
                t = time.perf_counter()
                toks, logs = m.generate(a["ids"], a["steps"], keep_logits=True)
                sec = time.perf_counter() - t
                if logs:
                    np.save(a["out"], np.stack(logs))
                reply(True, {"tokens": toks, "seconds": sec})
            elif op == "capture":
                import re

                pat = re.compile(a["pattern"])
                la = m._load_args
                cap = BitnetCppModel(la["lib"], la["model_path"], n_ctx=max(32, (len(a["ids"]) + 32) // 32 * 32), threads=la["threads"],
                                     kv_type=la["kv_type"], capture=True)  # fmt: skip
                try:
                    _, tensors = cap.capture_logits(a["ids"], lambda n: bool(pat.match(n)))
                finally:
                    cap.close()
                n = len(a["ids"])
                rows = {k: v.reshape(n, -1)[a["position"]] for k, v in tensors.items() if v.size % n == 0}
                with open(a["out"], "wb") as f:
                    np.savez(f, **rows)
                reply(True, {"n": len(rows)})
            elif op == "compare_pass":
                from crossval.backends.base import greedy_compare_pass

                choose, chain = None, None
                if a.get("sampling"):
                    from engine.sampling import SamplingParams

                    chain = m.sampler_chain(SamplingParams(**a["sampling"]))
                    choose = lambda row, chain=chain: m.sample_logits(chain, row)  # noqa: E731
                try:
                    cp = greedy_compare_pass(m, a["ids"], a["steps"], a["forced"] or None, choose)
                finally:
                    if chain is not None:
                        m.free_sampler(chain)
                arrs = {"prompt": cp.prompt_logits}
                if cp.step_logits is not None:
                    arrs["steps"] = cp.step_logits
                if cp.forced_logits is not None:
                    arrs["forced"] = cp.forced_logits
                with open(a["out"], "wb") as f:
                    np.savez(f, **arrs)
                reply(True, {"tokens": cp.tokens, "seconds": cp.seconds})
            else:
                reply(False, error=f"unknown op {op!r}")
        except Exception as e:  # report, keep serving: the parent decides what an error means
            reply(False, error=f"{type(e).__name__}: {e}")
    if m is not None:
        m.close()
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
