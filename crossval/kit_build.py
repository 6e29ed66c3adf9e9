"""Building a reference kit (gemma.cpp, bitnet.cpp) into the crossval cache, the steps every kit
shares: the kit's cache key (a hash of its own files), its BUILD_INFO.json, one build at a time
per build directory (a file lock), and running its build.sh with stage lines as progress.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
import time
from pathlib import Path

import blake3

from crossval import isa, signals


def hash_files(kit: Path, files: list[Path]) -> str:
    """blake3 over each file's path (relative to the kit) and bytes, in the order given: 16 hex digits."""
    h = blake3.blake3()
    for f in files:
        h.update(str(f.relative_to(kit)).encode() + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def build_info(out: Path) -> dict | None:
    """The build's BUILD_INFO.json, or None when it is missing or unreadable (no finished build)."""
    try:
        return json.loads((out / "BUILD_INFO.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def build_once(out: Path, find, build):
    """find() when it finds a finished build in `out`, else build() — under a file lock next to
    `out`, so another process building this very directory is waited for (then found)."""
    found = find()
    if found:
        return found
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building this very directory
        found = find()
        if found:
            return found
        return build()


def run_build_sh(cmd: list[str], out: Path, stage, progress, failure) -> float:
    """Run the kit's build.sh (cmd) into `out` → the seconds it ran. stage(line) is the progress
    text of a stage line of its output (None for other lines), passed to progress(text); on a
    non-zero exit, failure(exit status, last 40 lines) is the exception raised. Records the CPU
    the build is for (crossval/isa.py)."""
    # a build under way is never taken for a finished one, even when it is interrupted: build.sh
    # writes BUILD_INFO.json last (from its stage stamps), so the old one goes first
    (out / "BUILD_INFO.json").unlink(missing_ok=True)
    (out / isa.RECORD).unlink(missing_ok=True)
    t = time.perf_counter()
    tail: list[str] = []
    with signals.child(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace") as p:  # killed if we are
        for line in p.stdout:
            line = line.rstrip("\n")
            tail = (tail + [line])[-40:]
            text = stage(line)
            if text is not None:
                progress(text)
        rc = p.wait()
    if rc != 0:
        raise failure(rc, tail)
    isa.record(out)
    return time.perf_counter() - t
