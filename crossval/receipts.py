"""Receipts: validate against schemas/ (JSON Schema 2020-12) and write atomically.

A receipt is validated before it is written; the write goes to a unique temporary file in the
target directory, is fsynced, then renamed over the target — a reader sees the old file or the new
one, never a partial one, and concurrent writers never share a temporary file.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import jsonschema

from crossval.errors import InputError, InternalError, OutputError, output_error

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
SCHEMA_VERSION = "1.0"
SCHEMAS = {"parity": "receipt.schema.json", "run-summary": "summary.schema.json", "envelope": "envelope.schema.json", "sweep": "sweep.schema.json",
           "matrix": "matrix.schema.json", "matrix-shard": "matrix-shard.schema.json",
           "perf": "perf.schema.json"}


class ReceiptError(InputError):
    """A receipt is missing, unreadable or does not match its schema (one-line message)."""


def header(kind: str, run_id: str | None = None) -> dict:
    """The fields every receipt kind starts with (schemas/*.schema.json): schema_version, kind,
    run_id (a new one unless given) and timestamp. Every receipt is built on it."""
    if kind not in SCHEMAS:
        raise InternalError(f"unknown receipt kind {kind!r}")
    return {"schema_version": SCHEMA_VERSION, "kind": kind, "run_id": run_id or new_run_id(), "timestamp": utc_now()}


@lru_cache(maxsize=None)
def _validator(kind: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMA_DIR / SCHEMAS[kind]).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _where(err: jsonschema.ValidationError) -> str:
    return "/".join(str(p) for p in err.absolute_path) or "(top level)"


def validate(obj: dict) -> None:
    """Raise ReceiptError naming the first offending field; pass silently when valid."""
    if not isinstance(obj, dict):
        raise MalformedReceipt(f"a receipt must be a JSON object, not {type(obj).__name__}")
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in SCHEMAS:
        raise MalformedReceipt(f"kind: unknown receipt kind {_clip(repr(kind))} (expected one of {', '.join(SCHEMAS)})")
    try:
        errors = sorted(_validator(kind).iter_errors(obj), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    except RecursionError:
        raise MalformedReceipt("nested too deeply to validate") from None
    if errors:
        e = errors[0]
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ReceiptError(_clip(f"{_where(e)}: {e.message}") + more)


def _clip(s: str, n: int = 300) -> str:
    """Error messages quote the offending value; a hostile value can be megabytes long."""
    return s if len(s) <= n else s[:n] + "…"


def content_hash(obj: dict) -> str:
    """blake3 of the canonical JSON (sorted keys, no whitespace, UTF-8) of every field except
    receipt_blake3 itself."""
    from blake3 import blake3

    body = {k: v for k, v in obj.items() if k != "receipt_blake3"}
    return blake3(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")).hexdigest()


def seal(obj: dict) -> dict:
    obj["receipt_blake3"] = content_hash(obj)
    return obj


def check_seal(obj: dict) -> None:
    if obj.get("receipt_blake3") != content_hash(obj):
        raise ReceiptError("receipt_blake3: does not match the receipt's content (edited after it was written?)")


MAX_RECEIPT_BYTES = 16 << 20  # the largest receipts written are under 1 MB
MAX_DEPTH = 32  # deepest receipt nesting is 6


class MalformedReceipt(ReceiptError):
    """Not a receipt at all: unreadable, not a regular file, over MAX_RECEIPT_BYTES, not JSON,
    NaN/Infinity or out-of-range numbers, nested deeper than MAX_DEPTH (CLI exit 2)."""


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _finite_float(s: str) -> float:
    f = float(s)
    if f in (float("inf"), float("-inf")):
        raise ValueError(f"number {s[:20]}{'…' if len(s) > 20 else ''} is out of range")
    return f


def _bounded_int(s: str) -> int:
    if len(s.lstrip("-")) > 19:  # beyond int64: no receipt field holds such a number
        raise ValueError(f"integer {s[:20]}… is out of range")
    return int(s)


def _depth_ok(obj) -> bool:
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if d > MAX_DEPTH:
            return False
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values() if isinstance(v, (dict, list)))
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o if isinstance(v, (dict, list)))
    return True


def loads_bounded(data: bytes):
    """json.loads for files we did not write: strict UTF-8, no NaN/Infinity (nor floats that
    overflow to them, nor integers beyond 19 digits), nesting at most MAX_DEPTH."""
    if len(data) > MAX_RECEIPT_BYTES:
        raise MalformedReceipt(f"too large ({len(data)} bytes; receipts are at most {MAX_RECEIPT_BYTES >> 20} MiB)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedReceipt(f"not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        obj = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except json.JSONDecodeError as e:
        raise MalformedReceipt(f"not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise MalformedReceipt(f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:  # NaN/Infinity, an overflowing float, an integer out of range
        raise MalformedReceipt(f"not valid JSON ({str(e).splitlines()[0]})") from None
    if not _depth_ok(obj):
        raise MalformedReceipt(f"nested deeper than {MAX_DEPTH} levels")
    return obj


def read(path: str | os.PathLike):
    """A JSON file we did not write, read within bounds (MalformedReceipt otherwise): a regular
    file of at most MAX_RECEIPT_BYTES, parsed by loads_bounded."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the open
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise MalformedReceipt(f"{path}: not a regular file")
            if st.st_size > MAX_RECEIPT_BYTES:
                raise MalformedReceipt(f"{path}: too large ({st.st_size} bytes; receipts are at most {MAX_RECEIPT_BYTES >> 20} MiB)")
            data = f.read(MAX_RECEIPT_BYTES + 1)
    except FileNotFoundError:
        raise MalformedReceipt(f"{path}: no such file") from None
    except IsADirectoryError:
        raise MalformedReceipt(f"{path}: is a directory") from None
    except OSError as e:
        raise MalformedReceipt(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return loads_bounded(data)
    except MalformedReceipt as e:
        raise MalformedReceipt(f"{path}: {e}") from None


def read_valid(path: str | os.PathLike) -> dict:
    obj = read(path)
    try:
        validate(obj)
        check_seal(obj)
    except ReceiptError as e:
        raise type(e)(f"{path}: {e}") from None  # MalformedReceipt stays malformed (exit 2)
    return obj


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create an output directory (and its parents) or raise OutputError in one line — a file in
    the way, no permission, a read-only or full file system."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"cannot write {path}: a file is in the way of the output directory") from None
    except OSError as e:
        raise output_error(path, e) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: permission denied")
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write data to a unique temporary file beside `path`, fsync, rename over `path`. An OSError
    (full disk, no permission) leaves nothing behind and raises OutputError."""
    path = Path(path)
    ensure_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise output_error(path, e) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def atomic_write_json(path: str | os.PathLike, obj: dict) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8"))


def write(path: str | os.PathLike, obj: dict) -> Path:
    """Seal (receipt_blake3), validate, then write atomically. Invalid receipts are never written:
    a receipt crossval built that fails its own schema is an InternalError."""
    seal(obj)
    try:
        validate(obj)
    except ReceiptError as e:
        raise InternalError(f"a {obj.get('kind')} receipt failed its schema: {e}") from None
    return atomic_write_json(path, obj)


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
