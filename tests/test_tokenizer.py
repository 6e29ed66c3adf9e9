"""Our tokenizers against llama.cpp: its own test vectors, golden fixtures, a 10,000-line corpus,
round trips, chat templates, special tokens, and the tokenize CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs_llamacpp, real_model_path
from corpus import corpus, long_words, mixed_text
from engine.gguf_model import open_gguf
from engine.tokenizer import Tokenizer

GOLDEN = Path(__file__).parent / "golden"
# vocab files of llama.cpp's test data whose families we claim (tokenizer.ggml.model llama / gpt2)
CLAIMED_WITH_VECTORS = ["command-r", "deepseek-coder", "deepseek-llm", "falcon", "gpt-2", "llama-bpe", "llama-spm",
                        "mpt", "phi-3", "qwen2", "qwen35", "refact", "starcoder"]  # fmt: skip
CLAIMED_WITHOUT_VECTORS = ["aquila", "baichuan", "gpt-neox"]
NOT_CLAIMED = {"bert-bge": "WPM (bert)", "gemma-4": "gemma4 BPE", "nomic-bert-moe": "UGM (t5)"}


def vocab_path(name: str) -> Path:
    from crossval.models import llama_data_dir

    p = llama_data_dir() / "vocab" / f"ggml-vocab-{name}.gguf"
    if not p.exists():
        msg = "llama.cpp vocab files not fetched (run `crossval models fetch llama-data`)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return p


@pytest.mark.real_model
def test_every_vocab_file_is_claimed_or_explained():
    from crossval.models import llama_data_dir

    vocab_path("llama-spm")
    names = {p.name[len("ggml-vocab-") : -len(".gguf")] for p in (llama_data_dir() / "vocab").glob("ggml-vocab-*.gguf")}
    assert names == set(CLAIMED_WITH_VECTORS) | set(CLAIMED_WITHOUT_VECTORS) | set(NOT_CLAIMED)


@pytest.mark.real_model
@pytest.mark.parametrize("family", CLAIMED_WITH_VECTORS)
def test_llamacpp_test_vectors(family):
    """Every .inp/.out vector of llama.cpp's tokenizer tests (add_special=false, parse_special=false)."""
    p = vocab_path(family)
    tok = Tokenizer.from_gguf(open_gguf(p))
    texts = Path(str(p) + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outs = Path(str(p) + ".out").read_text(encoding="utf-8").split("\n")
    n = 0
    for text, out in zip(texts, outs):
        assert tok.encode(text, add_special=False, parse_special=False) == [int(x) for x in out.split()], repr(text)
        n += 1
    assert n >= 40


def _golden_files():
    return sorted(GOLDEN.glob("tokens_*.json"))


@pytest.mark.real_model
@pytest.mark.parametrize("golden", _golden_files(), ids=lambda p: p.stem)
def test_golden_fixtures(golden):
    doc = json.loads(golden.read_text(encoding="utf-8"))
    fam = doc["family"]
    path = {"smollm2": lambda: real_model_path("smollm2"), "gemma3": lambda: real_model_path("gemma3-270m")}.get(fam, lambda: vocab_path(fam))()
    g = open_gguf(path)
    # the fixture belongs to this tokenizer: selected by tokenizer.ggml.model / pre
    assert (g.get("tokenizer.ggml.model"), g.get("tokenizer.ggml.pre")) == (doc["tokenizer_model"], doc["tokenizer_pre"])
    tok = Tokenizer.from_gguf(g)
    assert len(doc["cases"]) >= 8
    for case in doc["cases"]:
        assert tok.encode(case["text"], True, False) == case["ids"], repr(case["text"])
        assert tok.encode(case["text"], True, True) == case["ids_parse_special"], repr(case["text"])


def _corpus_targets():
    return [("smollm2", None), ("gemma3-270m", None)] + [(None, f) for f in CLAIMED_WITH_VECTORS + CLAIMED_WITHOUT_VECTORS]


@pytest.mark.real_model
@needs_llamacpp
@pytest.mark.parametrize("model, family", _corpus_targets(), ids=lambda x: x or "")
def test_corpus_matches_llamacpp(model, family):
    from crossval.backends.llamacpp import LlamaCppBackend

    path = real_model_path(model) if model else vocab_path(family)
    tok = Tokenizer.from_gguf(open_gguf(path))
    lines = corpus(10_000)
    assert len(lines) >= 10_000
    bad = []
    with LlamaCppBackend(path, vocab_only=True) as ref:
        for i, line in enumerate(lines):
            special = i % 5 == 0  # a fifth of the lines also with parse_special
            ours, theirs = tok.encode(line, True, special), ref.tokenize(line, True, special)
            if ours != theirs:
                bad.append(line)
                continue
            if i % 3 == 0:  # round trip: detokenize(tokenize(x)) as llama.cpp renders it
                assert tok.detokenize(ours) == ref.detokenize(theirs), repr(line)
    assert not bad, f"{len(bad)} of {len(lines)} lines differ, first: {bad[0]!r}"


def _first_difference(a: list[int], b: list[int]) -> str:
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"first difference at token {i} of {len(a)} (ours) / {len(b)} (llama.cpp): {a[i:i + 5]} vs {b[i:i + 5]}"


def _on_a_big_stack(fn, *args):
    """Run fn in a thread with a 1 GiB stack: llama.cpp's std::regex pre-tokenizers (deepseek-*)
    recurse once per character and overflow the main thread's 8 MiB on a 100,000-character word."""
    import threading

    out: list = []
    old = threading.stack_size(1 << 30)
    try:
        th = threading.Thread(target=lambda: out.append(fn(*args)))
        th.start()
    finally:
        threading.stack_size(old)
    th.join()
    return out[0]


# the megabyte on every target, with and without parse_special, when CROSSVAL_TOKENIZER_FULL=1
# (the nightly matrix; about 4 minutes); by default on the two real models without parse_special
MEGABYTE_DEFAULT = {"smollm2", "gemma3-270m"}


@pytest.mark.real_model
@needs_llamacpp
@pytest.mark.parametrize("model, family", _corpus_targets(), ids=lambda x: x or "")
def test_long_words_and_a_megabyte_match_llamacpp(model, family):
    """Adversarial lengths, id for id: 100,000-character single words no pre-tokenizer splits (a
    quadratic merge loop takes minutes on these) and 1 MB of mixed text, with and without
    parse_special. Words of 64+ characters take the native merge loop when it is built."""
    from crossval.backends.llamacpp import LlamaCppBackend

    path = real_model_path(model) if model else vocab_path(family)
    tok = Tokenizer.from_gguf(open_gguf(path))
    with LlamaCppBackend(path, vocab_only=True) as ref:
        for name, word in long_words(100_000).items():
            ours, theirs = tok.encode(word, True, False), _on_a_big_stack(ref.tokenize, word, True, False)
            assert ours == theirs, f"{name}: {_first_difference(ours, theirs)}"
        full = bool(os.environ.get("CROSSVAL_TOKENIZER_FULL"))
        if (model or family) not in MEGABYTE_DEFAULT and not full:
            return
        text = mixed_text()
        assert len(text.encode("utf-8")) >= 1 << 20
        for special in (False, True) if full else (False,):
            ours, theirs = tok.encode(text, True, special), _on_a_big_stack(ref.tokenize, text, True, special)
            assert ours == theirs, f"mixed, parse_special={special}: {_first_difference(ours, theirs)}"


@pytest.mark.real_model
@needs_llamacpp
@pytest.mark.parametrize("family", ["llama-spm", "gpt-2"])
def test_long_words_python_merge_loop(family, monkeypatch):
    """The pure-Python merge loops (used when the native kernels are not built) on the same words."""
    from crossval.backends.llamacpp import LlamaCppBackend
    from engine.tokenizer import native

    monkeypatch.setattr(native, "available", lambda: False)
    path = vocab_path(family)
    tok = Tokenizer.from_gguf(open_gguf(path))
    with LlamaCppBackend(path, vocab_only=True) as ref:
        for name, word in long_words(100_000).items():
            ours, theirs = tok.encode(word, True, False), _on_a_big_stack(ref.tokenize, word, True, False)
            assert ours == theirs, f"{name}: {_first_difference(ours, theirs)}"


@pytest.mark.real_model
@needs_llamacpp
def test_llama3_chat_template_and_stop_tokens():
    """A Llama-3 chat rendered with its template, tokenized with parse_special (as chat prompts
    are): same ids as llama.cpp, and the turn ends with EOT (<|eot_id|>), not EOS."""
    from crossval.backends.llamacpp import LlamaCppBackend
    from crossval.models import llama_data_dir
    from engine.tokenizer.chat import render, stop_tokens

    p = vocab_path("llama-bpe")
    tmpl = (llama_data_dir() / "templates" / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text()
    tok = Tokenizer.from_gguf(open_gguf(p))
    v = tok.vocab
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye?"}]  # fmt: skip
    text = render(tmpl, msgs, bos_token=v.texts[v.bos].decode(), eos_token=v.texts[v.eos].decode())
    assert text.startswith("<|begin_of_text|>") and text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tok.encode(text, add_special=False, parse_special=True)
    with LlamaCppBackend(p, vocab_only=True) as ref:
        assert ids == ref.tokenize(text, False, True)
    eot = v.token_to_id[b"<|eot_id|>"]
    assert v.eot == eot and eot in stop_tokens(v) and v.eos in stop_tokens(v) and eot != v.eos
    assert ids.count(eot) == len(msgs)  # one per finished turn (system, user, assistant, user)
    assert tok.encode(text, False, parse_special=False).count(eot) == 0  # without parse_special: plain text


def test_special_tokens_split_only_with_parse_special(tiny_model):
    tok = Tokenizer.from_gguf(open_gguf(tiny_model("llama")))
    assert 2 in tok.encode("the</s>cat", add_special=False, parse_special=True)
    assert 2 not in tok.encode("the</s>cat", add_special=False, parse_special=False)
    assert tok.encode("", add_special=True) == [1] and tok.encode("", add_special=False) == []


def test_fingerprint_is_stable_and_sensitive(tmp_path):
    from engine.tokenizer.fingerprint import fingerprint
    from tiny_models import write_tiny_model

    a = fingerprint(open_gguf(write_tiny_model(tmp_path / "a.gguf", "llama", seed=1)))
    b = fingerprint(open_gguf(write_tiny_model(tmp_path / "b.gguf", "llama", seed=2)))  # other weights, same vocab
    assert a == b and len(a["tokenizer_blob_sha256"]) == 64
    from engine.tokenizer.vocab import load_vocab

    g = open_gguf(tmp_path / "a.gguf")
    assert fingerprint(g, load_vocab(g)) == a  # a loaded vocabulary only saves work
    raw = (tmp_path / "a.gguf").read_bytes().replace(b"\xe2\x96\x81cat", b"\xe2\x96\x81cot", 1)
    (tmp_path / "c.gguf").write_bytes(raw)
    assert fingerprint(open_gguf(tmp_path / "c.gguf"))["tokenizer_blob_sha256"] != a["tokenizer_blob_sha256"]


@needs_llamacpp
def test_tokenize_cli_compare(tmp_path, tiny_model):
    f = tmp_path / "lines.txt"
    f.write_text("the cat sat\non the mat\n\u00e9t\u00e9 \U0001F642\n", encoding="utf-8")
    run = lambda *a: subprocess.run([sys.executable, "-m", "crossval.cli", "tokenize", *map(str, a)], capture_output=True, text=True)  # noqa: E731
    r = run("--model", tiny_model("llama"), "--file", f, "--compare")
    assert r.returncode == 0 and "3/3 lines match" in r.stdout, r.stderr
    r = run("--model", tiny_model("llama"), "the cat", "--json")
    assert json.loads(r.stdout)["ids"][0] == 1


@needs_llamacpp
def test_tokenize_cli_reports_mismatches(tmp_path, tiny_model, monkeypatch, capsys):
    from crossval import cli

    f = tmp_path / "lines.txt"
    f.write_text("the cat sat\non the mat\n", encoding="utf-8")
    real = Tokenizer.encode
    monkeypatch.setattr(Tokenizer, "encode", lambda self, t, a=True, p=False: real(self, t, a, p)[:-1] + [3] if "mat" in t else real(self, t, a, p))
    assert cli.main(["tokenize", "--model", str(tiny_model("llama")), "--file", str(f), "--compare"]) == 1
    out = capsys.readouterr().out
    assert "1/2 lines match" in out and "difference" in out and "line 2" in out


@pytest.mark.real_model
@needs_llamacpp
@pytest.mark.parametrize("model, family", [("smollm2", None), ("gemma3-270m", None), (None, "llama-spm"), (None, "llama-bpe"),
                                           (None, "phi-3"), (None, "qwen2")], ids=lambda x: x or "")  # fmt: skip
def test_token_to_piece_matches_llamacpp(model, family):
    """Every token's piece, with and without special rendering (a stride sample for big vocabs)."""
    from crossval.backends.llamacpp import LlamaCppBackend

    path = real_model_path(model) if model else vocab_path(family)
    tok = Tokenizer.from_gguf(open_gguf(path))
    n = tok.vocab.n_tokens
    ids = range(0, n, max(1, n // 20000))
    with LlamaCppBackend(path, vocab_only=True) as ref:
        for i in ids:
            for special in (True, False):
                assert tok.token_to_piece(i, special) == ref.token_to_piece(i, special), (i, special)
        sample = list(range(0, n, max(1, n // 500)))
        for rs, us in ((False, False), (True, True), (True, False)):
            assert tok.detokenize(sample, rs, us) == ref.detokenize(sample, rs, us)


@pytest.mark.real_model
@needs_llamacpp
def test_tokenize_cli_on_a_vocab_only_file(tmp_path):
    f = tmp_path / "lines.txt"
    f.write_text("Hello world\n  tabs\tand spaces  \n<|begin_of_text|> x\n", encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "crossval.cli", "tokenize", "--model", str(vocab_path("llama-bpe")), "--file", str(f),
                        "--compare", "--parse-special"], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0 and "3/3 lines match" in r.stdout, r.stderr
