"""`crossval protocol check CMD`: does a server speak the external protocol (docs/backends.md)?

It starts CMD as crossval-external/1 or /2 and runs it through every request, malformed input, the
deadline and shutdown, one case after another in one child:

    hello            the first line is a hello with a known protocol tag, a name and capabilities
    before-load      a request before `load` gets an error reply, not a crash
    load             n_vocab, with the transport the hello offers (frames when offered)
    malformed-json   a line that is not JSON gets an error reply and the child keeps serving
    non-utf8         a line that is not UTF-8: the same
    unknown-op       an op the protocol does not have: the same
    tokenize         (capability tokenize) a list of ints; detokenize returns text
    logits           shape (len(ids), n_vocab), bytes matching the shape, every value finite
    deterministic    the same ids twice give the same bytes
    generate         len(tokens) == steps, logits (steps, n_vocab), tokens[0] = argmax of the prompt's last row
    capture          (capability capture) rows named <stage>-<layer> for the stages asked, one row each
    close            the child exits with status 0 within 10 s and writes nothing more
    other-transport  (both transports offered) a second child answering logits in the other
                     transport gives the same bytes

Every reply must arrive within the deadline. A case that kills the child (a crash, a protocol
error, a timeout) fails with the harness's own reason (the words a receipt would carry), and the
cases after it are "not run". check() returns the cases; the command prints them and exits 0 when
all pass, 1 otherwise.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from dataclasses import dataclass

import numpy as np

from crossval.backends.base import BackendCrashed, BackendError, BackendTimeout, BackendUnavailable, Unsupported
from crossval.backends.external import ExternalBackend
from crossval.errors import InputError

CASES = ("hello", "before-load", "load", "malformed-json", "non-utf8", "unknown-op", "tokenize", "logits", "deterministic",
         "generate", "capture", "close")  # fmt: skip


@dataclass
class Case:
    name: str
    ok: bool | None  # None: not run / not applicable
    reason: str


class _Client(ExternalBackend):
    """ExternalBackend's transport and checks, driven one request at a time."""

    def __init__(self, argv: list[str], timeout: float):  # noqa: super().__init__ would run hello + load at once
        self.command = shlex.join(argv)
        self._start(argv, dict(os.environ), timeout)
        self._frames = []

    def raw(self, line: bytes, op: str):
        """Write one raw request line; the reply's result (BackendError on an ok:false reply)."""
        self._pending = (op, time.monotonic() + self.timeout)
        self._proc.stdin.write(line)
        self._proc.stdin.flush()
        return self._receive()


def _expect_error(c: _Client, line: bytes, op: str) -> tuple[bool, str]:
    try:
        c.raw(line, op)
    except BackendError as e:
        if isinstance(e, (BackendCrashed, BackendTimeout, BackendUnavailable)):
            raise
        return True, f"error reply: {e}"
    return False, "answered ok: true (an error reply was expected)"


def check(command: str, model_path: str, timeout: float = 30.0, steps: int = 3) -> list[Case]:
    argv = shlex.split(command)
    if not argv:
        raise InputError("protocol check: empty command")
    try:
        c = _Client(argv, timeout)
    except OSError as e:
        raise InputError(f"protocol check: cannot start {argv[0]!r}: {e.strerror}") from None
    cases: list[Case] = []
    caps: dict = {}
    state: dict = {}  # the first logits, for the cases that compare with them
    ids = [1, 2, 3, 4, 5]

    def case(name: str, fn) -> bool:
        try:
            ok, reason = fn()
        except Unsupported as e:
            cases.append(Case(name, None, f"not declared: {e}"))
            return True
        except (BackendCrashed, BackendTimeout) as e:
            cases.append(Case(name, False, str(e)))
            return False
        except BackendError as e:
            cases.append(Case(name, False, f"error reply: {e}"))
            return True
        cases.append(Case(name, ok, reason))
        return c._proc.poll() is None

    def hello():
        c._pending = ("handshake", time.monotonic() + timeout)
        h = c._receive()
        if not isinstance(h, dict) or h.get("type") != "hello":
            return False, "the first message is not a hello"
        if not isinstance(h.get("capabilities"), dict) or not isinstance(h.get("name"), str):
            return False, "the hello lacks 'name' or 'capabilities'"
        tr = h.get("transports", ["base64"])
        if not isinstance(tr, list) or not set(tr) <= {"base64", "frames"} or not tr:
            return False, f"the hello's transports {tr!r} are not a list of base64 / frames"
        caps.update(h["capabilities"], _transports=tr)
        from crossval.backends.base import Capabilities

        c.capabilities = Capabilities(**{k: bool(caps.get(k)) for k in ("tokenize", "logits", "generate", "capture")})
        return True, f"{c._hello_tag}, {h['name']!r}, transports {tr}, capabilities {sorted(k for k, v in h['capabilities'].items() if v)}"

    def load():
        c.transport = "frames" if "frames" in caps["_transports"] else "base64"
        info = c._call("load", model_path=str(model_path), n_ctx=512, threads=1, kv_type="f32", transport=c.transport)
        c.n_vocab = c._field(info, "n_vocab", int, "load")
        if c.n_vocab <= 0:
            return False, f"n_vocab {c.n_vocab}"
        return True, f"n_vocab {c.n_vocab}, transport {c.transport}"

    def tokenize():
        got = c.tokenize("the cat sat")
        text = c.detokenize(got)
        if not got:
            return False, "no ids for 'the cat sat'"
        return True, f"{len(got)} ids, detokenized to {text!r}"

    def logits():
        a = c.logits(ids)
        if not np.isfinite(a).all():
            return False, f"{int((~np.isfinite(a)).sum())} values are not finite"
        state['first'] = a
        return True, f"shape {list(a.shape)}"

    def deterministic():
        a = c.logits(ids)
        if a.tobytes() != state['first'].tobytes():
            return False, f"two logits requests for the same ids differ (max |Δ| {float(np.abs(a - state['first']).max()):.3g})"
        return True, "the same ids gave the same bytes"

    def generate():
        g = c.generate(ids, steps)
        if g.logits is None or g.logits.shape != (steps, c.n_vocab):
            return False, "no step logits"
        if g.tokens[0] != int(np.argmax(state['first'][-1])):
            return False, f"first token {g.tokens[0]} is not the argmax {int(np.argmax(state['first'][-1]))} of the prompt's last logits"
        if any(g.tokens[i] != int(np.argmax(g.logits[i])) for i in range(steps)):
            return False, "a generated token is not the argmax of the logits it was chosen from"
        return True, f"{steps} greedy tokens {g.tokens}"

    def capture():
        stages = ("kqv_out", "ffn_inp", "l_out")
        rows = c.capture_rows(ids, 2, stages)
        if not rows:
            return False, "no rows"
        layers = sorted({int(k.rpartition("-")[2]) for k in rows})
        missing = [f"{s}-{layer}" for s in stages for layer in layers if f"{s}-{layer}" not in rows]
        if missing:
            return False, f"rows missing: {missing[:4]}"
        return True, f"{len(rows)} rows, layers {layers[0]}..{layers[-1]}"

    def close():
        c._proc.stdin.write((json.dumps({"op": "close", "args": {}}) + "\n").encode())
        c._proc.stdin.flush()
        try:
            rc = c._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return False, "still running 10 s after close"
        rest = bytes(c._buf) + c._proc.stdout.read()
        if rc != 0:
            return False, f"exited with status {rc} after close"
        if rest:
            return False, f"wrote {len(rest)} bytes after its last reply: {rest[:40]!r}"
        return True, "exited with status 0"

    plan = [
        ("hello", hello),
        ("before-load", lambda: _expect_error(c, b'{"op": "logits", "args": {"ids": [1, 2]}}\n', "before-load")),
        ("load", load),
        ("malformed-json", lambda: _expect_error(c, b'{"op": "logits", "args": \n', "malformed-json")),
        ("non-utf8", lambda: _expect_error(c, b'{"op": "\xff\xfe", "args": {}}\n', "non-utf8")),
        ("unknown-op", lambda: _expect_error(c, b'{"op": "no-such-op", "args": {}}\n', "unknown-op")),
        ("tokenize", tokenize), ("logits", logits), ("deterministic", deterministic), ("generate", generate),
        ("capture", capture), ("close", close),
    ]  # fmt: skip
    try:
        for i, (name, fn) in enumerate(plan):
            if name in ("deterministic", "generate") and "first" not in state:
                cases.append(Case(name, None, "not run: logits failed"))
                continue
            alive = case(name, fn)
            if not alive or (name in ("hello", "load") and cases[-1].ok is False):
                why = f"not run: {name} failed" if cases[-1].ok is False else f"not run: the child exited after {name}"
                cases.extend(Case(n, None, why) for n, _ in plan[i + 1 :])
                break
    finally:
        c._shutdown()
    offered = caps.get("_transports") or []
    if "first" in state and len(offered) > 1:  # a second child: the other transport must give the same bytes
        other = "base64" if c.transport == "frames" else "frames"
        d = _Client(argv, timeout)
        try:
            d._pending = ("handshake", time.monotonic() + timeout)
            d._receive()
            d.capabilities = c.capabilities
            info = d._call("load", model_path=str(model_path), n_ctx=512, threads=1, kv_type="f32", transport=other)
            d.n_vocab = d._field(info, "n_vocab", int, "load")
            a = d.logits(ids)
            same = a.tobytes() == state["first"].tobytes()
            cases.append(Case("other-transport", same, f"logits as {other}: {'the same bytes as' if same else 'differ from'} {c.transport}"))
        except BackendError as e:
            cases.append(Case("other-transport", False, f"{other}: {e}"))
        finally:
            d._shutdown()
    return cases


def passed(cases: list[Case]) -> bool:
    """Every case passed or was not applicable (an optional capability the hello does not declare);
    a case not run because an earlier one failed leaves the check failed through that one."""
    return all(x.ok is not False for x in cases) and any(x.ok for x in cases)
