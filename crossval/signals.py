"""Ctrl-C, SIGTERM and deadlines for work done in this process.

- `interruptible()` (around every command, crossval/cli.py): the first SIGINT or SIGTERM raises
  `Interrupted` in the main thread — a KeyboardInterrupt, so no `except Exception` swallows it —
  and the command unwinds: backends close (their process groups killed), receipts already written
  stay, `crossval run` writes a summary marked `interrupted`; exit 130 (SIGINT) or 143 (SIGTERM).
  A second signal kills every registered child process group and exits at once (os._exit).
- `register()/unregister()` keep the process groups of the children we started (each child runs
  in its own session, so a terminal's Ctrl-C reaches only us); `held()` holds a signal back
  around a step that must not be cut in two: starting and registering a child (none is ever
  started unregistered), writing a receipt and counting it in the summary.
- `deadline(seconds, stage)`: a timer (SIGALRM) that raises BackendTimeout in the main thread —
  the engine's own steps (render, tokenize, load) get the same deadline as a child backend's
  requests. Native code runs to its end first; Python code is stopped between two bytecodes.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

_children: set[int] = set()  # process-group ids of live children
_state = {"signum": None, "held": 0, "pending": None}


class Interrupted(KeyboardInterrupt):
    """The command was interrupted by SIGINT or SIGTERM; exit_code = 128 + the signal number."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def register(pgid: int) -> None:
    _children.add(pgid)


def unregister(pgid: int) -> None:
    _children.discard(pgid)


def kill_children() -> None:
    for pgid in list(_children):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _children.discard(pgid)


def _on_signal(signum, frame):
    if _state["signum"] is not None:  # the second one: no more unwinding
        kill_children()
        os._exit(128 + signum)
    _state["signum"] = signum
    if _state["held"]:
        _state["pending"] = signum  # raised when the held step is done
        return
    raise Interrupted(signum)


def interrupted() -> int | None:
    """The signal that interrupted this process, if one did."""
    return _state["signum"]


@contextmanager
def interruptible():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def held():
    """Around a step that must not be cut in two (starting and registering a child; writing a
    receipt and counting it): a signal arriving meanwhile is raised right after."""
    _state["held"] += 1
    try:
        yield
    finally:
        _state["held"] -= 1
        if not _state["held"] and _state["pending"] is not None:
            signum, _state["pending"] = _state["pending"], None
            raise Interrupted(signum)


@contextmanager
def deadline(seconds: float | None, stage: str):
    """Raise BackendTimeout(stage) if the block runs longer than `seconds` (main thread only)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return
    from crossval.backends.base import BackendTimeout

    def expire(signum, frame):
        raise BackendTimeout(stage, seconds, [])

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextmanager
def child(argv: list[str], **popen_args):
    """subprocess.Popen in its own session, registered; leaving the block by an exception (an
    interrupt, a timeout) kills its whole process group — a build's make and compilers too."""
    import subprocess

    with held():
        p = subprocess.Popen(argv, start_new_session=True, **popen_args)
        register(p.pid)
    try:
        yield p
    except BaseException:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                p.kill()
        raise
    finally:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for f in (p.stdin, p.stdout, p.stderr):
            if f is not None:
                f.close()
        unregister(p.pid)
