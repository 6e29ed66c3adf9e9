"""Receipts: validate against schemas/ (JSON Schema 2020-12) and write atomically.

A receipt is validated before it is written; the write goes to a unique temporary file in the
target directory, is fsynced, then renamed over the target — a reader sees the old file or the new
one, never a partial one, and concurrent writers never share a temporary file.
"""

from __future__ import annotations

import json
import os
import secrets
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
        raise ReceiptError("a receipt must be a JSON object")
    kind = obj.get("kind")
    if kind not in SCHEMAS:
        raise ReceiptError(f"kind: unknown receipt kind {kind!r} (expected one of {', '.join(SCHEMAS)})")
    errors = sorted(_validator(kind).iter_errors(obj), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        e = errors[0]
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ReceiptError(f"{_where(e)}: {e.message}{more}")


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


def read(path: str | os.PathLike) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReceiptError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ReceiptError(f"{path}: cannot read ({e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ReceiptError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def read_valid(path: str | os.PathLike) -> dict:
    obj = read(path)
    try:
        validate(obj)
        check_seal(obj)
    except ReceiptError as e:
        raise ReceiptError(f"{path}: {e}") from None
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


def atomic_write_json(path: str | os.PathLike, obj: dict) -> Path:
    """Write JSON to a unique temporary file beside `path`, fsync, rename over `path`. An OSError
    (full disk, no permission) leaves nothing behind and raises OutputError."""
    path = Path(path)
    ensure_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    data = (json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
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
