"""Run the llama.cpp backend in a child process, so a crash or hang ends one comparison in a
diagnostic receipt instead of ending the harness.

Parent and child speak JSON lines over the child's stdin/stdout; large arrays (logits) travel as
.npy files in a private temporary directory. Every request has a deadline: past it the child's
process group is killed and BackendTimeout is raised; a child that dies or prints something that
is not a protocol line raises BackendCrashed. Both carry the stage (the request) and the tail of
the child's stderr.

Test hook: CROSSVAL_CHILD_FAULT="<fault>@<op>" makes the child misbehave when it receives <op>:
fault is hang, segv, abort, garbage, exit or kill (SIGKILL, as the OOM killer sends). It exists so tests can prove each failure path.
"""

from __future__ import annotations

import collections
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from crossval import signals
from crossval.backends.base import (
    LAYER_STAGES, Backend, BackendCrashed, BackendError, BackendSettings, BackendTimeout, BackendUnavailable, Capabilities,
    ComparePass, GenerateResult,
)  # fmt: skip

PROTOCOL = "crossval-isolated/1"


class ChildProcess:
    """A child process speaking JSON lines on stdin/stdout, with a deadline per request, its
    stderr kept (last 40 lines) for diagnostics, and its process group killed on timeout.
    `protocol` is the value every reply's "protocol" field must carry."""

    protocol = PROTOCOL

    def _start(self, argv: list[str], env: dict, timeout: float) -> None:
        self.timeout = timeout
        self._pending: tuple[str, float] | None = None
        self._stderr = collections.deque(maxlen=40)
        with signals.held():  # registered before any Ctrl-C can unwind past it (crossval/signals.py)
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          env=env, start_new_session=True)  # fmt: skip
            signals.register(self._proc.pid)
        try:  # a wider pipe: fewer wake-ups for a large reply (Linux; the default stays elsewhere)
            import fcntl

            fcntl.fcntl(self._proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
        except (ImportError, AttributeError, OSError):
            pass
        self._buf = bytearray()  # bytes read from the child's stdout, not yet returned
        self._scan = 0  # _buf[:_scan] is known to hold no newline
        self._sel = selectors.DefaultSelector()  # one for the child's life: waits for its stdout with a deadline
        self._sel.register(self._proc.stdout.fileno(), selectors.EVENT_READ)
        # the linear-time check (tests); the last reply's frames: bytes, and wall / CPU seconds of this
        # process from its line to their end
        self.reader_stats = {"reads": 0, "bytes_read": 0, "bytes_scanned": 0, "last_frames_bytes": 0, "last_frames_s": 0.0,
                             "last_frames_cpu_s": 0.0}  # fmt: skip
        self._t_err = threading.Thread(target=self._drain_stderr, daemon=True)
        self._t_err.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    # --- transport ----------------------------------------------------------------------------
    def _drain_stderr(self) -> None:
        for line in iter(self._proc.stderr.readline, b""):
            self._stderr.append(line.decode("utf-8", errors="replace").rstrip())

    def stderr_tail(self) -> list[str]:
        time.sleep(0.05)  # let the drain thread catch the last lines of a dying child
        return list(self._stderr)

    def _kill(self) -> None:
        if self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self._proc.kill()
        signals.unregister(self._proc.pid)
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def _wait_readable(self, deadline: float, stage: str) -> None:
        """Return when the child's stdout has bytes (or end of file); past the deadline kill it and raise."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._kill()
                raise BackendTimeout(stage, self.timeout, self.stderr_tail())
            if self._sel.select(timeout=min(left, 1.0)):
                return

    def _eof_error(self, stage: str) -> BackendCrashed:
        """The child closed its stdout: BackendCrashed with how it exited."""
        rc = self._proc.wait(timeout=5) if self._proc.poll() is None else self._proc.returncode
        return BackendCrashed(stage, _describe_exit(rc), rc, self.stderr_tail())

    def _fill(self, deadline: float, stage: str) -> None:
        """Append what the child has written (at most 1 MiB) to the buffer, waiting until the deadline."""
        self._wait_readable(deadline, stage)
        chunk = os.read(self._proc.stdout.fileno(), 1 << 20)
        if not chunk:
            raise self._eof_error(stage)
        self.reader_stats["reads"] += 1
        self.reader_stats["bytes_read"] += len(chunk)
        self._buf += chunk  # amortised O(len(chunk)): a bytearray grows in place

    def _readline(self, deadline: float, stage: str) -> bytes:
        """The next line (without its newline). Each byte is searched for the newline once: the
        search resumes where the previous one ended, so a reply of n bytes costs O(n)."""
        while (i := self._buf.find(b"\n", self._scan)) < 0:
            self.reader_stats["bytes_scanned"] += len(self._buf) - self._scan
            self._scan = len(self._buf)
            self._fill(deadline, stage)
        self.reader_stats["bytes_scanned"] += i + 1 - self._scan
        line = bytes(memoryview(self._buf)[:i])
        del self._buf[: i + 1]  # O(1) amortised in CPython: the bytearray moves its start
        self._scan = 0
        return line

    def _readexact(self, n: int, deadline: float, stage: str) -> np.ndarray:
        """The next n bytes (a binary frame after a reply line) as a new uint8 array. The pipe is read
        straight into it (os.readv into the array's memory), so the kernel's copy out of the pipe is
        the only one; bytes _readline already took from the pipe (at most one read) are moved first."""
        try:
            out = np.empty(n, dtype=np.uint8)
        except MemoryError:
            self._kill()
            raise BackendCrashed(stage, f"protocol error: a frame of {n} bytes does not fit in memory", None, self.stderr_tail()) from None
        have = min(n, len(self._buf))
        view = memoryview(out)
        view[:have] = self._buf[:have]
        del self._buf[:have]
        self._scan = 0
        fd = self._proc.stdout.fileno()
        while have < n:
            self._wait_readable(deadline, stage)
            k = os.readv(fd, [view[have:]])
            if not k:
                raise self._eof_error(stage)
            have += k
            self.reader_stats["reads"] += 1
            self.reader_stats["bytes_read"] += k
        return out

    def _tag_ok(self, tag) -> bool:
        return tag == self.protocol

    def _send(self, op: str, **args) -> None:
        if self._proc.poll() is not None:
            raise BackendCrashed(op, "child is not running", self._proc.returncode, self.stderr_tail())
        self._pending = (op, time.monotonic() + self.timeout)
        try:
            self._proc.stdin.write((json.dumps({"op": op, "args": args}) + "\n").encode())
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            rc = self._proc.wait(timeout=5)
            raise BackendCrashed(op, _describe_exit(rc), rc, self.stderr_tail()) from None

    def _call(self, op: str, **args):
        self._send(op, **args)
        return self._receive()

    def _send_ready(self, op: str, **args) -> None:
        self.wait_loaded()
        self._send(op, **args)

    def _receive(self):
        op, deadline = self._pending
        self._pending = None
        line = self._readline(deadline, op)
        try:
            msg = json.loads(line)
            if not isinstance(msg, dict):
                raise ValueError("not a protocol message")
        except ValueError:
            self._kill()
            raise BackendCrashed(op, f"protocol error: unexpected output {line[:80]!r}", self._proc.returncode, self.stderr_tail()) from None
        if not self._tag_ok(msg.get("protocol")):
            self._kill()
            raise BackendCrashed(op, f"protocol error: reply tagged {msg.get('protocol')!r}, expected {self.protocol!r}", self._proc.returncode,
                                 self.stderr_tail())  # fmt: skip
        self._frames = []
        if "frames" in msg:  # binary frames follow the line (crossval-external/2)
            sizes = msg["frames"]
            if not isinstance(sizes, list) or not all(isinstance(n, int) and 0 <= n < 1 << 40 for n in sizes):
                self._kill()
                raise BackendCrashed(op, "protocol error: 'frames' is not a list of byte counts", self._proc.returncode, self.stderr_tail())
            t, c = time.perf_counter(), time.process_time()
            self._frames = [self._readexact(n, deadline, op) for n in sizes]
            # the frames follow the line at once: the time to read them is the transport's alone
            self.reader_stats.update(last_frames_bytes=sum(sizes), last_frames_s=time.perf_counter() - t,
                                     last_frames_cpu_s=time.process_time() - c)  # fmt: skip
        if not msg.get("ok"):
            err = msg.get("error", "unknown error")
            if msg.get("unavailable"):
                raise BackendUnavailable(err)
            raise BackendError(err)
        return msg.get("result")

    def _shutdown(self) -> None:
        if self._pending is not None and self._proc.poll() is None:
            self._kill()  # a request (e.g. the load) is still under way: do not wait for it
        if self._proc.poll() is None:
            try:
                self._proc.stdin.write((json.dumps({"op": "close", "args": {}}) + "\n").encode())
                self._proc.stdin.flush()
                self._proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                pass
        self._kill()
        for f in (self._proc.stdin, self._proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self._t_err.join(timeout=2)
        self._sel.close()
        try:
            self._proc.stderr.close()
        except OSError:
            pass


class ChildBackend(ChildProcess):
    """The Backend requests a child answering serve() (below) understands, the same for every
    such backend: the subclass starts the child, sends "load" (_send_load) and defines _npy(name)
    (the file an array travels through) and capture_rows; it may add to the child's provenance
    (_with_build)."""

    def _send_load(self, **args) -> None:
        """Ask the child to load a model; the reply is read by wait_loaded, when first needed."""
        self._info = None
        self._t0 = time.time()  # the child's "loaded_at" is on the same clock
        self._send("load", **args)

    def wait_loaded(self) -> None:
        """Wait for the reply to "load": sets load_s (from the request to the child's loaded_at, however
        late the reply is read), n_vocab and the provenance."""
        if self._info is None:
            self._info = self._receive()
            self.load_s = self._info.get("loaded_at", time.time()) - self._t0
            self.n_vocab = self._info["n_vocab"]
            self._provenance = self._with_build(self._info["provenance"])

    def _with_build(self, provenance: dict) -> dict:
        """The child's provenance, completed with what only the parent knows (e.g. the kit build)."""
        return provenance

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
        """Start a compare_pass in the child (greedy, or the backend's own seeded sampler chain) and
        return at once (finish_compare_pass waits). The files its rows go to are made here, their
        memory allocated by a thread of this process while the child computes (prepare_arrays)."""
        self.wait_loaded()
        shapes = {"prompt": len(ids), "steps": steps, "forced": len(forced or [])}
        self._preparing = prepare_arrays(self._npy("pass"), {k: (n, self.n_vocab) for k, n in shapes.items() if n})
        self._send_ready("compare_pass", ids=[int(i) for i in ids], steps=steps, forced=[int(t) for t in forced or []],
                         out=self._npy("pass"), sampling=None if sampling is None else vars(sampling))  # fmt: skip

    def finish_compare_pass(self) -> ComparePass:
        try:
            r = self._receive()
        finally:
            self._preparing.join()
        arrs = map_arrays(self._npy("pass"), r["arrays"])
        return ComparePass(arrs["prompt"], r["tokens"], arrs.get("steps"), arrs.get("forced"), r["seconds"])

    def provenance(self) -> dict:
        self.wait_loaded()
        return self.describe(**self._provenance)


class IsolatedLlamaCpp(ChildBackend, Backend):
    """Parent side: the llama.cpp Backend, answered by a child process."""

    name = "llamacpp"
    capabilities = Capabilities(sampling=True, capture=True, concurrent=True)

    @classmethod
    def from_settings(cls, model_path, s: BackendSettings) -> "IsolatedLlamaCpp":
        return cls(model_path, n_ctx=s.n_ctx, threads=s.threads, kv_type=s.kv_type, timeout=s.timeout, llama_lib=s.llama_lib)

    def __init__(self, model_path, n_ctx: int = 2048, threads: int = 1, kv_type: str = "f16", timeout: float = 120.0,
                 llama_lib: str | None = None, env: dict | None = None, n_batch: int | None = None):  # fmt: skip
        # logits travel through files: in shared memory when the system has it
        shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self._tmp = tempfile.TemporaryDirectory(prefix="crossval-child-", dir=shm)
        child_env = dict(os.environ if env is None else env)
        if llama_lib:
            child_env["LLAMA_CPP_LIB_PATH"] = str(llama_lib)
        from crossval.isa import check_llama_cpp

        check_llama_cpp(child_env.get("LLAMA_CPP_LIB_PATH"))  # a library built for a wider CPU: exit 3 before use
        self._start([sys.executable, "-m", "crossval.backends.isolated"], child_env, timeout)
        # the child loads the model while the caller does other work (e.g. loads the engine);
        # the first request waits for it
        self._send_load(model_path=str(model_path), n_ctx=n_ctx, threads=threads, kv_type=kv_type, n_batch=n_batch)

    def _npy(self, name: str) -> str:
        return str(Path(self._tmp.name) / (name if name == "pass" else f"{name}.npy"))  # "pass": a prefix (save_arrays)

    # --- Backend ------------------------------------------------------------------------------
    def capture_rows(self, ids: list[int], position: int, stages: tuple[str, ...] = LAYER_STAGES) -> dict[str, np.ndarray]:
        """llama.cpp's named graph tensors (cb_eval) of the given stages, as the row of
        `position`, for a teacher-forced pass over ids (a separate capturing context). llama.cpp's
        gemma graphs name the residual after attention sa_out; it is returned as ffn_inp."""
        self.wait_loaded()
        names = set(stages) | ({"sa_out"} if "ffn_inp" in stages else set())
        pattern = r"^(" + "|".join(sorted(names)) + r")-\d+$"
        out = self._npy("capture").replace(".npy", ".npz")
        self._call("capture", ids=[int(i) for i in ids], position=int(position), pattern=pattern, out=out)
        with np.load(out) as z:
            rows = {k.replace("sa_out-", "ffn_inp-"): z[k] for k in z.files}
        os.unlink(out)
        return rows

    def close(self) -> None:
        self._shutdown()
        self._tmp.cleanup()


def _describe_exit(rc: int | None) -> str:
    if rc is None:
        return "child closed its output"
    if rc < 0:
        if -rc == signal.SIGKILL:
            return "killed by SIGKILL (out of memory, or killed from outside)"
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exited with status {rc}"


def save_arrays(prefix: str, arrays: dict[str, np.ndarray]) -> list[str]:
    """Child side: each array to its own <prefix>.<name>.npy (unless it is already that file, a
    mapping array_file made); → the names, for the reply."""
    for name, arr in arrays.items():
        path = f"{prefix}.{name}.npy"
        if isinstance(arr, np.memmap) and arr.filename == os.path.abspath(path):
            arr.flush()
        else:
            np.save(path, arr)
    return list(arrays)


def array_file(prefix: str, name: str):
    """Child side: alloc(shape, dtype) → an array mapping <prefix>.<name>.npy, written in place —
    the file prepare_arrays made when its shape and dtype are these, else a new one."""

    def alloc(shape, dtype):
        path = f"{prefix}.{name}.npy"
        try:
            arr = np.lib.format.open_memmap(path, mode="r+")
            if arr.shape == tuple(shape) and arr.dtype == np.dtype(dtype):
                return arr
            del arr
        except (OSError, ValueError):
            pass
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)

    return alloc


def prepare_arrays(prefix: str, shapes: dict[str, tuple[int, ...]]) -> threading.Thread:
    """Parent side: make <prefix>.<name>.npy (float32, each shape) for the child's array_file, and
    allocate their memory (posix_fallocate: shared memory's pages, zeroed) in a thread, started
    and returned; join it before the files go. Why: pages a process touches first cost it the
    allocation, and on a virtual machine whose free memory goes back to its host that is the
    largest part of writing a long prompt's logits (641 MB for gemma-3's 611 × 262,144; measured
    2.0–4.1 s of the child's 2.4–5.0 s copy, crossval/process.py small_pages). The child computes
    meanwhile; this process's engine side has the time."""
    paths = []
    for name, shape in shapes.items():
        path = f"{prefix}.{name}.npy"
        m = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)  # header and size; no page touched
        paths.append((path, m.offset, m.nbytes))
        del m

    def allocate():
        for path, offset, nbytes in paths:
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError:
                continue  # already mapped and unlinked by the parent, or never used
            try:
                os.posix_fallocate(fd, offset, nbytes)
            except OSError:
                pass  # out of shared memory: the child's writes fault the pages in (or fail) as before
            finally:
                os.close(fd)

    t = threading.Thread(target=allocate, name="crossval-prepare-arrays", daemon=True)
    t.start()
    return t


def map_arrays(prefix: str, names: list[str]) -> dict[str, np.ndarray]:
    """Parent side: the arrays save_arrays wrote, mapped read-only (the logits of a long prompt
    are hundreds of MB: mapping the child's file costs no copy) and unlinked at once (the mapping
    keeps the pages until the arrays are dropped)."""
    out = {}
    for name in names:
        path = f"{prefix}.{name}.npy"
        out[name] = np.load(path, mmap_mode="r")
        os.unlink(path)
    return out


# --- child side ------------------------------------------------------------------------------
def _fault(op: str, protocol_out) -> None:
    spec = os.environ.get("CROSSVAL_CHILD_FAULT", "")
    if "@" not in spec:
        return
    kind, where = spec.split("@", 1)
    if where != op:
        return
    print(f"crossval child: injecting fault {kind} at {op}", file=sys.stderr, flush=True)
    if kind == "hang":
        while True:
            time.sleep(3600)
    if kind == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if kind == "abort":
        os.abort()
    if kind == "garbage":
        protocol_out.write("this is not json\n")
        protocol_out.flush()
        while True:
            time.sleep(3600)
    if kind == "exit":
        os._exit(3)
    if kind == "kill":  # what the kernel's OOM killer does
        os.kill(os.getpid(), signal.SIGKILL)


def serve(load, capture_model, free_sampler) -> int:
    """The child's request loop, shared by every backend that runs in a child process (llama.cpp
    here, bitnet.cpp in bitnetcpp.py): read JSON-lines requests on stdin, answer each with one
    protocol line, until "close" or end of input.

    load(args) -> (model, provenance dict) loads a model (raising BackendUnavailable / BackendError
    for a refused load); capture_model(model, ids) -> a capturing model for a teacher-forced pass
    over ids (closed after use); free_sampler(model, chain) frees a sampler chain of the model.
    The model answers tokenize, detokenize, logits, generate, capture_logits, sampler_chain,
    sample_logits, n_vocab and close, as crossval.backends.base.greedy_compare_pass expects.
    """
    from crossval.process import small_pages

    small_pages()  # the logits arrays on ordinary pages, as in the parent
    # the protocol gets a private copy of fd 1; fd 1 itself (and sys.stdout) then point at stderr,
    # so nothing the C library or Python prints can corrupt the protocol stream
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(ok: bool, result=None, error: str | None = None, unavailable: bool = False):
        msg = {"protocol": PROTOCOL, "ok": ok}
        if ok:
            msg["result"] = result
        else:
            msg["error"] = error
            msg["unavailable"] = unavailable
        out.write(json.dumps(msg) + "\n")
        out.flush()

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
                    m, provenance = load(a)
                except BackendError as e:
                    reply(False, error=str(e), unavailable=isinstance(e, BackendUnavailable))
                    continue
                reply(True, {"n_vocab": m.n_vocab, "provenance": provenance, "loaded_at": time.time()})
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
                cap = capture_model(m, a["ids"])
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
                    choose = lambda row, chain=chain, m=m: m.sample_logits(chain, row)  # noqa: E731
                m.rows_out = array_file(a["out"], "prompt")  # the prompt's logits straight into the file the parent maps
                try:  # and every other row too, as it comes
                    cp = greedy_compare_pass(m, a["ids"], a["steps"], a["forced"] or None, choose,
                                             lambda name, shape: array_file(a["out"], name)(shape, np.float32))  # fmt: skip
                finally:
                    m.rows_out = None
                    if chain is not None:
                        free_sampler(m, chain)
                arrs = {"prompt": cp.prompt_logits}
                if cp.step_logits is not None:
                    arrs["steps"] = cp.step_logits
                if cp.forced_logits is not None:
                    arrs["forced"] = cp.forced_logits
                reply(True, {"tokens": cp.tokens, "seconds": cp.seconds, "arrays": save_arrays(a["out"], arrs)})
            else:
                reply(False, error=f"unknown op {op!r}")
        except Exception as e:  # report, keep serving: the parent decides what an error means
            reply(False, error=f"{type(e).__name__}: {e}")
    if m is not None:
        m.close()
    return 0


def _load_llamacpp(a: dict):
    from crossval.backends.llamacpp import LlamaCppBackend, LlamaCppError, LlamaCppUnavailable

    try:
        backend = LlamaCppBackend(a["model_path"], n_ctx=a["n_ctx"], threads=a["threads"], kv_type=a["kv_type"], n_batch=a.get("n_batch"))
    except LlamaCppError as e:
        raise (BackendUnavailable if isinstance(e, LlamaCppUnavailable) else BackendError)(str(e)) from None
    return backend, backend.provenance()


def _capture_llamacpp(backend, ids: list[int]):
    from crossval.backends.llamacpp import LlamaCppBackend

    return LlamaCppBackend(backend.model_path, n_ctx=max(8, len(ids) + 1), threads=backend.threads, kv_type=backend.kv_type, capture=True)


def child_main() -> int:
    return serve(_load_llamacpp, _capture_llamacpp, lambda backend, chain: backend.lc.llama_sampler_free(chain))

if __name__ == "__main__":
    sys.exit(child_main())
