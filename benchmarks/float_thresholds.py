"""Measure float mode against llama.cpp position by position, for crossval/thresholds.py.

    python benchmarks/float_thresholds.py generate            # write the generated prompt sets
    python benchmarks/float_thresholds.py measure OUT [--steps 256] [--sets default,chat,generated,generated-chat]
    python benchmarks/float_thresholds.py analyse OUT          # rates, tails, and every step count's verdicts

`generate` writes two prompt sets built from a fixed seed (benchmarks/prompts/generated.jsonl:
facts, code, lists, arithmetic, several languages, short to long; generated-chat.jsonl: one- and
two-turn chats). `measure` runs llama.cpp's greedy continuation on both real models and the float
engine teacher-forced along it: the per-position rows `crossval run --mode float --steps N` compares
are the first n_prompt + N − 1 of a longer run (greedy decoding is deterministic, so a shorter run
is a prefix of a longer one). `analyse` pools every position and prints, per model: the
distribution of per-position cosine and KLD, the top-1 mismatches with their margins, the rates a
healthy engine shows above each soft level, and the verdict the current thresholds give every
prompt at N = 1, 2, 4, …, 256 — the figures quoted in crossval/thresholds.py.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PROMPTS = HERE / "prompts"

TOPICS = ["the Roman Empire", "photosynthesis", "the French Revolution", "black holes", "the printing press", "volcanoes",
          "the human heart", "the Silk Road", "quantum computing", "honey bees", "the Great Barrier Reef", "jazz music",
          "the Industrial Revolution", "glaciers", "the immune system", "ancient Egypt", "electric cars", "the Moon"]  # fmt: skip
CITIES = ["Paris", "Tokyo", "Nairobi", "Lima", "Oslo", "Cairo", "Hanoi", "Toronto", "Madrid", "Sydney", "Mumbai", "Berlin"]
FUNCS = [("is_prime", "n", "Return True if n is a prime number."), ("merge_sorted", "a, b", "Merge two sorted lists."),
         ("word_count", "text", "Count the words in a string."), ("flatten", "xs", "Flatten a nested list."),
         ("gcd", "a, b", "Greatest common divisor of a and b."), ("parse_date", "s", "Parse an ISO date string."),
         ("median", "values", "Return the median of a list of numbers."), ("rot13", "s", "Apply the ROT13 cipher.")]  # fmt: skip
LANG = [("fr", "La capitale de l'Italie est"), ("es", "El río más largo del mundo es"), ("de", "Die Hauptstadt von Japan ist"),
        ("it", "Il monte più alto d'Europa è"), ("pt", "O maior oceano do planeta é"), ("nl", "De hoofdstad van Canada is")]  # fmt: skip
QUESTIONS = ["Why is the sky blue?", "How do vaccines work?", "What causes the seasons?", "Explain recursion to a child.",
             "What is the difference between weather and climate?", "How does a refrigerator keep food cold?",
             "Give me three tips for learning a new language.", "What is a prime number?", "Summarise the plot of Cinderella.",
             "How many legs does a spider have, and why?", "Write a haiku about autumn.", "What is 12 times 14?"]  # fmt: skip


def generate(seed: int = 20261202) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    text: list[dict] = []
    for i, t in enumerate(rng.sample(TOPICS, 8)):
        text.append({"id": f"gen-facts-{i}", "kind": "facts", "text": f"Here is a short explanation of {t}."})
    for i, (name, args, doc) in enumerate(rng.sample(FUNCS, 5)):
        text.append({"id": f"gen-code-{i}", "kind": "code", "text": f'def {name}({args}):\n    """{doc}"""\n'})
    for i in range(4):
        n, c = rng.randint(3, 7), rng.choice(CITIES)
        text.append({"id": f"gen-list-{i}", "kind": "list", "text": f"{n} things to do on a weekend in {c}:\n1."})
    for i in range(4):
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        op = rng.choice(["+", "-", "*"])
        text.append({"id": f"gen-math-{i}", "kind": "math", "text": f"Question: what is {a} {op} {b}? Answer step by step.\n"})
    for i, (lang, s) in enumerate(LANG):
        text.append({"id": f"gen-lang-{lang}", "kind": "multilingual", "text": s})
    for i in range(3):  # long: several topic sentences joined
        parts = [f"{t} has shaped the world in ways that are easy to overlook." for t in rng.sample(TOPICS, 10)]
        text.append({"id": f"gen-long-{i}", "kind": "long", "text": " ".join(parts) + " In summary,"})
    chat: list[dict] = []
    for i, q in enumerate(rng.sample(QUESTIONS, 8)):
        chat.append({"id": f"gen-chat-{i}", "kind": "chat", "messages": [{"role": "user", "content": q}]})
    for i in range(2):
        q1, q2 = rng.sample(QUESTIONS, 2)
        chat.append({"id": f"gen-chat-turn-{i}", "kind": "chat", "messages": [
            {"role": "user", "content": q1}, {"role": "assistant", "content": "Sure."}, {"role": "user", "content": q2}]})  # fmt: skip
    return text, chat


def cmd_generate() -> None:
    PROMPTS.mkdir(exist_ok=True)
    text, chat = generate()
    for name, rows in (("generated", text), ("generated-chat", chat)):
        (PROMPTS / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(f"{PROMPTS / name}.jsonl: {len(rows)} prompts")


def cmd_measure(out: Path, steps: int, sets: list[str], models: list[str]) -> None:
    """Per prompt: llama.cpp's prompt logits and `steps` greedy steps (one compare pass), then the
    float engine teacher-forced over prompt + that continuation in one prefill — the positions
    `crossval run --mode float --steps N` compares, for every N ≤ steps — → OUT/<model>.jsonl."""
    from crossval import compare
    from crossval.backends import make_backend
    from crossval.backends.base import BackendSettings
    from crossval.models import resolve_model
    from crossval.prompts import load_file, load_set
    from crossval.run import Comparison, ModelPlan, render
    from engine.gguf_model import open_gguf

    out.mkdir(parents=True, exist_ok=True)
    for m in models:
        path = resolve_model(m)
        g = open_gguf(path)
        toks = g.get("tokenizer.ggml.tokens")
        special = lambda key: toks[int(g.get(key))] if g.get(key) is not None else ""  # noqa: E731
        plan = ModelPlan(m, m, path, g, {}, None, g.get("tokenizer.chat_template"), special("tokenizer.ggml.bos_token_id"),
                         special("tokenizer.ggml.eos_token_id"))  # fmt: skip
        settings = BackendSettings(n_ctx=2048, mode="float")
        with make_backend("llamacpp", path, settings) as ref, make_backend("engine", path, settings) as eng, \
                open(out / f"{m}.jsonl", "a") as f:  # fmt: skip
            for s in sets:
                prompts = load_file(PROMPTS / f"{s}.jsonl") if s.startswith("generated") else load_set(s)
                for prompt in prompts:
                    c = Comparison(prompt)
                    render(c, plan)
                    ids = ref.tokenize(c.text, add_bos=True, parse_special=prompt.is_chat)
                    rp = ref.compare_pass(ids, steps)
                    seq = list(ids) + list(rp.tokens[:-1])
                    ref_tf = np.concatenate([rp.prompt_logits, rp.step_logits[1:]])
                    tf = compare.teacher_forced(ref_tf, eng.logits(seq))
                    rows = [{k: r[k] for k in ("position", "cosine", "kld", "top1_match", "top1_margin")} for r in tf.rows()]
                    f.write(json.dumps({"model": m, "set": s, "id": prompt.id, "n_prompt": len(ids), "steps": steps, "rows": rows}) + "\n")
                    f.flush()
                    print(f"{m} {s} {prompt.id}: {len(ids)} + {steps} positions, min cosine {tf.cosine.min():.5f}", flush=True)


def _records(out: Path):
    for p in sorted(out.glob("*.jsonl")):
        for line in p.read_text().splitlines():
            yield json.loads(line)


def cmd_analyse(out: Path) -> None:
    from crossval import thresholds

    by_model: dict[str, list] = {}
    for rec in _records(out):
        by_model.setdefault(rec["model"], []).append(rec)
    t = thresholds.PROFILES["quantized-float"]
    for model, items in by_model.items():
        rows = [r for rec in items for r in rec["rows"]]
        cos = np.array([r["cosine"] for r in rows])
        kld = np.array([r["kld"] for r in rows])
        margins = np.array([r["top1_margin"] for r in rows if not r["top1_match"]])
        n = len(rows)
        print(f"== {model}: {len(items)} prompts, {n} positions")
        for q in (0.0, 0.0005, 0.001, 0.01, 0.05, 0.5):
            print(f"   cosine q{q:g} = {np.quantile(cos, q):.6f}   KLD q{1 - q:g} = {np.quantile(kld, 1 - q):.3g}")
        if len(margins):
            print(f"   top-1 mismatches {len(margins)} (rate {len(margins) / n:.4f}); margins: max {margins.max():.3f} "
                  f"q0.99 {np.quantile(margins, 0.99):.3f} q0.9 {np.quantile(margins, 0.9):.3f} q0.5 {np.quantile(margins, 0.5):.3f}")  # fmt: skip
        for level in (0.25, 0.5, 1.0):
            print(f"   rate decisive top-1 (margin ≥ {level}): {np.sum(margins >= level) / n:.5f}")
        for level in (0.999, 0.995, 0.99, 0.98, 0.95):
            print(f"   rate cosine < {level}: {np.mean(cos < level):.5f}")
        for level in (0.01, 0.02, 0.05, 0.1, 0.2):
            print(f"   rate KLD > {level}: {np.mean(kld > level):.5f}")
        worst = sorted(((max(r["kld"] for r in rec["rows"]), rec["set"], rec["id"]) for rec in items), reverse=True)[:3]
        print(f"   largest per-prompt KLD: {worst}")
        every = []  # every step count 1..steps of every prompt: (prompt, N) pairs that fail
        for rec in items:
            for steps in range(1, rec["steps"] + 1):
                prow = rec["rows"][: rec["n_prompt"] + steps - 1]
                if thresholds.evaluate(t, {"cosine_similarity": min(r["cosine"] for r in prow)}, {}, prow):
                    every.append((rec["id"], steps))
        print(f"   every step count: {sum(r['steps'] for r in items)} (prompt, N) pairs, {len(every)} fail {every[:5]}")
        for steps in (1, 2, 4, 8, 16, 32, 64, 128, 256):
            fails, runs = [], 0
            for rec in items:
                if rec["steps"] < steps:
                    continue
                runs += 1
                prow = [r for r in rec["rows"] if r["position"] < rec["n_prompt"] + steps - 1]
                parity = {"cosine_similarity": min(r["cosine"] for r in prow)}
                f = thresholds.evaluate(t, parity, {}, prow)
                if f:
                    fails.append(f"{rec['set']}/{rec['id']}: {f[0]}")
            if runs:
                print(f"   steps {steps:3d}: {len(fails)} of {runs} fail" + "".join(f"\n      {x}" for x in fails[:6]))


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("generate", "measure", "analyse"):
        print(__doc__)
        return 2
    if argv[0] == "generate":
        cmd_generate()
    elif argv[0] == "measure":
        import argparse

        a = argparse.ArgumentParser()
        a.add_argument("out")
        a.add_argument("--steps", type=int, default=256)
        a.add_argument("--sets", default="default,chat,generated,generated-chat")
        a.add_argument("--models", default="smollm2,gemma3-270m")
        args = a.parse_args(argv[1:])
        from crossval.process import limit_blas

        limit_blas(1)  # one BLAS thread: on a shared machine more threads only fight
        cmd_measure(Path(args.out), args.steps, args.sets.split(","), args.models.split(","))
    else:
        cmd_analyse(Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
