"""Signed receipts: a DSSE envelope around an in-toto Statement, signed with Ed25519.

    statement = {"_type": STATEMENT_TYPE,
                 "subject": [{"name": "model:<file name>",  "digest": {"sha256": receipt.model.sha256}},
                             {"name": "prompt:<prompt id>", "digest": {"sha256": sha256(receipt.prompt.text)}}],
                 "predicateType": PREDICATE_TYPE,
                 "predicate": <the sealed parity receipt>}
    envelope  = {"payloadType": PAYLOAD_TYPE, "payload": base64(canonical JSON of statement),
                 "signatures": [{"keyid": hex sha256 of the raw 32-byte public key,
                                 "sig": base64(Ed25519_sign(PAE(PAYLOAD_TYPE, payload bytes)))}]}
    PAE(t, b) = b"DSSEv1 " + len(t) + b" " + t + b" " + len(b) + b" " + b   (lengths in ASCII decimal)

The signature covers the exact payload bytes (DSSE signs bytes, not parsed JSON), so any change
to the receipt, its subjects or the signature fails verification; verification also recomputes the
subjects from the receipt (a statement whose subjects do not describe its own predicate is
rejected even when validly signed) and re-checks the receipt's schema and blake3 seal. The
envelope is written beside the receipt as `<model>__<prompt>.intoto.jsonl` (one line); the schema
is schemas/signed-receipt.schema.json.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import jsonschema

from crossval import receipts
from crossval.errors import InputError
from crossval.receipts import ReceiptError

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "urn:crossval:parity-receipt:1.0"
SUFFIX = ".intoto.jsonl"


class KeyFileError(InputError):
    """A key file is missing or is not the kind of key asked for (one line, exit 2)."""


class SignatureError(ReceiptError):
    """A signed receipt failed verification (one line, exit 1)."""


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE pre-authentication encoding: what is actually signed."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


# --- keys ----------------------------------------------------------------------------------------
def keygen(path: str | os.PathLike) -> tuple[Path, Path]:
    """Write a new Ed25519 private key (PEM PKCS#8, mode 0600) to path and its public key (PEM
    SubjectPublicKeyInfo) to path + '.pub'. Refuses to overwrite an existing key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    priv_path, pub_path = Path(path), Path(str(path) + ".pub")
    for p in (priv_path, pub_path):
        if p.exists():
            raise KeyFileError(f"{p}: already exists (not overwriting a key)")
    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    priv_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(priv)
    receipts.atomic_write_bytes(pub_path, pub)
    return priv_path, pub_path


def _read_key_file(path) -> bytes:
    try:
        p = Path(path)
        if p.stat().st_size > 16384:
            raise KeyFileError(f"{path}: too large to be a key file")
        return p.read_bytes()
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read key ({e.strerror or e})") from None


def load_private_key(path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(_read_key_file(path), password=None)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key ({str(e).splitlines()[0]})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(_read_key_file(path))
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{path}: not a PEM public key ({str(e).splitlines()[0]})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 public key")
    return key


def keyid(public_key) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


# --- statement -------------------------------------------------------------------------------------
def subjects(rec: dict) -> list[dict]:
    """What a parity receipt is about: the model file and the exact prompt text tokenized."""
    return [
        {"name": f"model:{Path(rec['model']['path']).name}", "digest": {"sha256": rec["model"]["sha256"]}},
        {"name": f"prompt:{rec['prompt']['id']}", "digest": {"sha256": hashlib.sha256(rec["prompt"]["text"].encode("utf-8")).hexdigest()}},
    ]


def statement(rec: dict) -> dict:
    return {"_type": STATEMENT_TYPE, "subject": subjects(rec), "predicateType": PREDICATE_TYPE, "predicate": rec}


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def sign(rec: dict, private_key) -> dict:
    """The DSSE envelope of a valid, sealed parity receipt."""
    receipts.validate(rec)
    receipts.check_seal(rec)
    if rec.get("kind") != "parity":
        raise ReceiptError(f"kind: only parity receipts are signed, not {rec.get('kind')!r}")
    body = _canonical(statement(rec))
    sig = private_key.sign(pae(PAYLOAD_TYPE, body))
    return {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(body).decode("ascii"),
            "signatures": [{"keyid": keyid(private_key.public_key()), "sig": base64.b64encode(sig).decode("ascii")}]}  # fmt: skip


def envelope_path(receipt_path: str | os.PathLike) -> Path:
    p = Path(receipt_path)
    return p.with_name(p.name[: -len(".json")] + SUFFIX if p.name.endswith(".json") else p.name + SUFFIX)


def write_signed(receipt_path: str | os.PathLike, rec: dict, private_key) -> Path:
    """Sign a receipt just written to receipt_path; write its envelope beside it (atomically)."""
    return receipts.atomic_write_bytes(envelope_path(receipt_path), _canonical(sign(rec, private_key)) + b"\n")


# --- verification --------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _schema() -> dict:
    return json.loads((receipts.SCHEMA_DIR / "signed-receipt.schema.json").read_text())


def _check(obj, ref: str, what: str) -> None:
    schema = {**_schema(), "$ref": f"#/$defs/{ref}"}
    cls = jsonschema.validators.validator_for(schema)
    errors = sorted(cls(schema).iter_errors(obj), key=lambda e: len(e.absolute_path))
    if errors:
        where = "/".join(str(p) for p in errors[0].absolute_path) or "(top level)"
        raise SignatureError(f"{what} {where}: {errors[0].message}")


def verify_envelope(env: dict, public_key) -> dict:
    """The receipt inside a signed envelope, or SignatureError naming what failed."""
    _check(env, "envelope", "envelope")
    if env["payloadType"] != PAYLOAD_TYPE:
        raise SignatureError(f"envelope payloadType: {env['payloadType']!r}, expected {PAYLOAD_TYPE!r}")
    try:
        body = base64.b64decode(env["payload"], validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("envelope payload: not base64") from None
    from cryptography.exceptions import InvalidSignature

    want = keyid(public_key)
    ok = False
    for s in env["signatures"]:
        try:
            sig = base64.b64decode(s["sig"], validate=True)
            public_key.verify(sig, pae(env["payloadType"], body))
            ok = True
            break
        except (binascii.Error, ValueError, InvalidSignature):
            continue
    if not ok:
        ids = ", ".join(s["keyid"][:16] for s in env["signatures"])
        other = all(s["keyid"] != want for s in env["signatures"])
        raise SignatureError(("signed by another key (keyid " + ids + f", expected {want[:16]})") if other
                             else "signature does not verify (receipt, subject or signature changed after signing)")  # fmt: skip
    try:
        st = receipts.loads_bounded(body)
    except ReceiptError as e:
        raise SignatureError(f"payload: {e}") from None
    _check(st, "statement", "statement")
    rec = st["predicate"]
    receipts.validate(rec)
    receipts.check_seal(rec)
    if st["subject"] != subjects(rec):
        raise SignatureError("statement subject: does not match the receipt's model and prompt digests")
    return rec


def verify_file(path: str | os.PathLike, public_key) -> dict:
    """Verify a signed receipt given either its envelope (*.intoto.jsonl) or the receipt itself
    (then the envelope beside it must verify and hold exactly this receipt)."""
    p = Path(path)
    if p.name.endswith(SUFFIX):
        try:
            return verify_envelope(receipts.read(p), public_key)
        except ReceiptError as e:
            raise type(e)(f"{p}: {e}") from None
    rec = receipts.read_valid(p)
    ep = envelope_path(p)
    if not ep.exists():
        raise SignatureError(f"{p}: not signed (no {ep.name} beside it)")
    try:
        signed = verify_envelope(receipts.read(ep), public_key)
    except ReceiptError as e:
        raise type(e)(f"{ep}: {e}") from None
    if signed != rec:
        raise SignatureError(f"{p}: differs from the receipt signed in {ep.name}")
    return rec
