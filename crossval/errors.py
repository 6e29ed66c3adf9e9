"""What can go wrong in a `crossval` command, and the exit code each kind of failure ends it with.

    0  EXIT_OK            every receipt passed
    1  EXIT_PARITY        a comparison failed its thresholds (the receipts say why)
    2  EXIT_INPUT         bad usage or bad input: a missing or malformed model, prompt file,
                          thresholds file, receipt, or an `--out` that cannot be written
    3  EXIT_NO_REFERENCE  the reference cannot run here (with --require-reference), or a native
                          build was made for a CPU with extensions this one lacks (crossval/isa.py)
    4  EXIT_CRASH         a backend timed out or crashed (a diagnostic receipt is still written)
    5  EXIT_INTERNAL      a bug in crossval: one line naming the file the traceback was saved to
  130 / 143            interrupted by SIGINT / SIGTERM (crossval/signals.py)
  141  EXIT_PIPE_CLOSED   the reader of stdout or stderr closed its pipe (`crossval … | head`): the
                          command stops quietly, as one killed by SIGPIPE would

Every error the harness raises on purpose derives from CrossvalError and carries its exit code;
the CLI prints its message as one line. Anything else reaching the CLI is an internal error.
Backend errors (crossval/backends/base.py) derive from CrossvalError too.
"""

from __future__ import annotations

EXIT_OK, EXIT_PARITY, EXIT_INPUT, EXIT_NO_REFERENCE, EXIT_CRASH, EXIT_INTERNAL = 0, 1, 2, 3, 4, 5
EXIT_PIPE_CLOSED = 128 + 13  # SIGPIPE

# the order of severity when a run ends with several outcomes (the worst wins)
SEVERITY = {EXIT_OK: 0, EXIT_PARITY: 1, EXIT_NO_REFERENCE: 2, EXIT_CRASH: 3, EXIT_INPUT: 4, EXIT_INTERNAL: 5}


def worst(codes) -> int:
    return max(codes, default=EXIT_OK, key=lambda c: SEVERITY.get(c, 0))


class CrossvalError(Exception):
    """Base of every error crossval raises on purpose; exit_code says how the CLI ends."""

    exit_code = EXIT_INTERNAL


class InputError(CrossvalError, ValueError):
    """Bad usage or bad input: one line, exit 2."""

    exit_code = EXIT_INPUT


class OutputError(InputError):
    """The output location cannot be written (a file where a directory is wanted, no permission,
    a full disk): one line, exit 2; nothing half-written is left behind."""


class InternalError(CrossvalError):
    """A broken invariant inside crossval (e.g. a receipt it built fails its own schema)."""

    exit_code = EXIT_INTERNAL


def output_error(path, e: OSError) -> OutputError:
    """The one-line OutputError for an OSError met while writing under `path`."""
    import errno

    why = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
           errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EROFS: "read-only file system",
           errno.ENOTDIR: "a path component is a file, not a directory",
           errno.EEXIST: "a file is in the way of a directory"}.get(e.errno, e.strerror or type(e).__name__)  # fmt: skip
    where = e.filename or path
    return OutputError(f"cannot write {where}: {why}")
