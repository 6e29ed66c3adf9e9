"""Signed receipts (crossval/signing.py): a DSSE envelope around an in-toto statement, Ed25519.
An untampered receipt verifies; a changed body, subject or signature, another key's signature, or
a receipt edited beside its envelope does not."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

from crossval import receipts, signing


def crossval(*args):
    return subprocess.run([sys.executable, "-m", "crossval.cli", *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def signed_run(tmp_path_factory, tiny_model):
    d = tmp_path_factory.mktemp("signed")
    r = crossval("keygen", d / "key")
    assert r.returncode == 0, r.stderr
    assert (os.stat(d / "key").st_mode & 0o777) == 0o600 and (d / "key.pub").exists()
    assert crossval("keygen", d / "key").returncode == 2  # never overwrites a key
    prompts = d / "p.txt"
    prompts.write_text("the cat sat\non the mat\n")
    r = crossval("run", "--model", tiny_model("llama"), "--reference", "engine", "--prompt-file", prompts, "--steps", 2,
                 "--out", d / "out", "--sign", d / "key", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    run_dir = d / "out" / json.loads(r.stdout)["run_id"]
    return d, run_dir


def _envelopes(run_dir):
    envs = sorted(run_dir.glob("*" + signing.SUFFIX))
    assert len(envs) == 2
    return envs


def test_untampered_receipts_verify(signed_run):
    d, run_dir = signed_run
    envs = _envelopes(run_dir)
    recs = [p.with_name(p.name.replace(signing.SUFFIX, ".json")) for p in envs]
    r = crossval("validate", "--verify", d / "key.pub", *envs, *recs)
    assert r.returncode == 0 and r.stdout.count("ok ") == 4, r.stderr
    env = json.loads(envs[0].read_text())
    st = json.loads(base64.b64decode(env["payload"]))
    rec = receipts.read_valid(recs[0])
    assert st["predicate"] == rec and st["subject"][0]["digest"]["sha256"] == rec["model"]["sha256"]
    assert crossval("validate", "--verify", d / "key.pub", run_dir / "summary.json").returncode == 1  # not signed
    r = crossval("validate", envs[0])  # an envelope without a key to check it with
    assert r.returncode == 2 and "--verify" in r.stderr


def _tamper(path, edit):
    env = json.loads(path.read_text())
    edit(env)
    path.write_text(json.dumps(env))


def _payload_edit(fn):
    def edit(env):
        st = json.loads(base64.b64decode(env["payload"]))
        fn(st)
        env["payload"] = base64.b64encode(json.dumps(st, sort_keys=True, separators=(",", ":")).encode()).decode()

    return edit


@pytest.mark.parametrize("case", ["body", "body_resealed", "subject", "signature", "payload_type"])
def test_tampered_envelope_fails(signed_run, tmp_path, case):
    d, run_dir = signed_run
    p = tmp_path / ("x" + signing.SUFFIX)
    p.write_bytes(_envelopes(run_dir)[0].read_bytes())

    def body(st):
        st["predicate"]["parity"]["cosine_similarity"] = 0.5

    def body_resealed(st):
        st["predicate"]["verdict"]["passed"] = not st["predicate"]["verdict"]["passed"]
        receipts.seal(st["predicate"])

    def subject(st):
        st["subject"][0]["digest"]["sha256"] = "0" * 64

    def signature(env):
        sig = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
        sig[7] ^= 1
        env["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()

    edits = {"body": _payload_edit(body), "body_resealed": _payload_edit(body_resealed), "subject": _payload_edit(subject),
             "signature": signature, "payload_type": lambda env: env.update(payloadType="application/json")}  # fmt: skip
    _tamper(p, edits[case])
    r = crossval("validate", "--verify", d / "key.pub", p)
    assert r.returncode == 1 and "FAIL" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_another_keys_signature_fails(signed_run, tmp_path):
    d, run_dir = signed_run
    assert crossval("keygen", tmp_path / "other").returncode == 0
    r = crossval("validate", "--verify", tmp_path / "other.pub", _envelopes(run_dir)[0])
    assert r.returncode == 1 and "another key" in r.stderr, r.stderr
    # the other key re-signs a statement whose subjects do not describe its receipt: still rejected
    rec = receipts.read_valid(_envelopes(run_dir)[0].with_name(_envelopes(run_dir)[0].name.replace(signing.SUFFIX, ".json")))
    st = signing.statement(rec)
    st["subject"][1]["digest"]["sha256"] = "f" * 64
    body = json.dumps(st).encode()
    key = signing.load_private_key(tmp_path / "other")
    env = {"payloadType": signing.PAYLOAD_TYPE, "payload": base64.b64encode(body).decode(),
           "signatures": [{"keyid": signing.keyid(key.public_key()), "sig": base64.b64encode(key.sign(signing.pae(signing.PAYLOAD_TYPE, body))).decode()}]}  # fmt: skip
    with pytest.raises(signing.SignatureError, match="subject"):
        signing.verify_envelope(env, key.public_key())


def test_receipt_edited_beside_its_envelope_fails(signed_run, tmp_path):
    d, run_dir = signed_run
    env = _envelopes(run_dir)[0]
    rec_path = tmp_path / env.name.replace(signing.SUFFIX, ".json")
    (tmp_path / env.name).write_bytes(env.read_bytes())
    rec = receipts.read_valid(run_dir / rec_path.name)
    rec["parity"]["exact_match_rate"] = 1.0 if rec["parity"]["exact_match_rate"] != 1.0 else 0.0
    receipts.write(rec_path, rec)  # resealed: the seal alone cannot tell
    assert crossval("validate", rec_path).returncode == 0
    r = crossval("validate", "--verify", d / "key.pub", rec_path)
    assert r.returncode == 1 and "differs" in r.stderr, r.stderr


def test_bad_keys_are_input_errors(signed_run, tmp_path, tiny_model):
    d, run_dir = signed_run
    (tmp_path / "junk").write_text("not a key")
    for args in (["validate", "--verify", tmp_path / "junk", _envelopes(run_dir)[0]], ["validate", "--verify", d / "key", _envelopes(run_dir)[0]],
                 ["run", "--model", tiny_model("llama"), "--reference", "engine", "--sign", d / "key.pub", "--out", tmp_path / "o"]):  # fmt: skip
        r = crossval(*args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()
