"""`crossval` command line: parse, set the process up, call the library, render the result.

Each `cmd_*` turns parsed arguments into a library call (crossval.run, .bench, .matrix, …) and
renders what comes back; the work itself lives in the library. Shared options come from
crossval/options.py; exit codes and the error hierarchy from crossval/errors.py.
"""

from __future__ import annotations

import os as _os
import signal as _signal
import sys as _sys


def _exit_quietly(signum, frame):
    """Until main() installs crossval/signals.py's handlers (the imports below take a moment):
    nothing is written and no child started yet, so a signal ends the command at once."""
    _os.write(2, f"crossval: error: interrupted by {_signal.Signals(signum).name}\n".encode())
    _os._exit(128 + signum)


if __name__ == "__main__" or _os.path.basename(_sys.argv[0]) == "crossval":  # run as the command, not imported
    for _s in (_signal.SIGINT, _signal.SIGTERM):
        _signal.signal(_s, _exit_quietly)

import argparse
import json
import sys

from crossval import options
from crossval.errors import (EXIT_CRASH, EXIT_INPUT, EXIT_INTERNAL, EXIT_NO_REFERENCE, EXIT_OK, EXIT_PARITY,  # noqa: F401
                             EXIT_PIPE_CLOSED,
                             CrossvalError, InputError)  # fmt: skip

EPILOG = ("exit codes: 0 ok · 1 parity failure · 2 bad usage or input · 3 reference unavailable · 4 timeout/crash · "
          "5 internal error (traceback saved) · 130/143 interrupted · 141 output pipe closed")  # fmt: skip


def _rich_console(**kw):
    """A rich Console whose closed pipe ends the command like any other (exit 141, see main):
    rich's own handler exits 1, which is our parity failure."""
    import errno

    from rich.console import Console

    class PipeConsole(Console):
        def on_broken_pipe(self) -> None:
            raise BrokenPipeError(errno.EPIPE, "the reader of the output has gone")

    return PipeConsole(**kw)


def _console():
    # tables keep their columns when piped or captured (CI logs), not only in a terminal
    return _rich_console(stderr=False, highlight=False, width=None if sys.stdout.isatty() else 140)


def _console_err():
    return _rich_console(stderr=True)


def _err(msg: str) -> None:
    try:
        print(f"crossval: error: {msg}", file=sys.stderr)
    except OSError:  # stderr's reader has gone: there is no one left to tell
        pass


def _reader_gone() -> bool:
    """Whether stdout or stderr is a pipe whose reader has closed it (`crossval … | head`): the
    write end of such a pipe polls POLLERR."""
    import select

    poll = select.poll()
    for fd in (1, 2):
        poll.register(fd, select.POLLOUT)
    return any(ev & select.POLLERR for _, ev in poll.poll(0))


def _quiet_exit_on_closed_pipe() -> int:
    """The reader of our output went away: stop without a word (stdout and stderr now go to
    /dev/null, so the interpreter's last flush cannot fail either), exit 141 like a command
    killed by SIGPIPE."""
    import os

    null = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        os.dup2(null, fd)
    return EXIT_PIPE_CLOSED


# --- models ------------------------------------------------------------------------------------
def cmd_models_fetch(args) -> int:
    from crossval import models

    names = args.names or [*models.REAL_MODELS, "llama-data"]
    con = _console()
    for n in names:
        say = lambda msg, n=n: con.print(f"[dim]{n}: {msg}[/dim]")  # noqa: E731
        p = models.fetch_llama_data(progress=say) if n == "llama-data" else models.fetch(n, progress=say)
        con.print(f"{n}: {p}")
    return EXIT_OK


def cmd_models_list(args) -> int:
    from rich.table import Table

    from crossval import models

    rows = models.list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    t = Table("name", "present", "size", "sha256", "path")
    for r in rows:
        t.add_row(r["name"], "yes" if r["present"] else "no", str(r["size"] or ""), (r["sha256"] or "")[:16], r["path"])
    _console().print(t)
    return EXIT_OK


# --- gemmacpp ----------------------------------------------------------------------------------
def cmd_gemmacpp_build(args) -> int:
    import time

    from crossval.gemmacpp_kit import ensure_built
    from crossval.models import resolve_model

    con = _console_err()
    t = time.perf_counter()
    with con.status("gemma.cpp kit") as st:
        b = ensure_built(resolve_model(args.model), patched=not args.no_patches, jobs=args.jobs,
                         progress=lambda line: st.update(f"gemma.cpp kit: {line[:100]}"))  # fmt: skip
    info = {"dir": str(b.dir), "variant": b.variant, "sbs": str(b.sbs), "driver": str(b.driver), "capi": str(b.capi),
            "built_s": b.built_s, "seconds": time.perf_counter() - t, **b.provenance()}  # fmt: skip
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        how = "reused" if b.built_s is None else f"built in {b.built_s:.0f} s"
        _console().print(f"gemma.cpp {info['gemma_cpp_commit'][:12]} ({b.variant}, {info['simd_target']}): {how}\n  {b.dir}")
    return EXIT_OK


# --- bitnetcpp ---------------------------------------------------------------------------------
def cmd_bitnetcpp_build(args) -> int:
    import time

    from crossval.bitnetcpp_kit import ensure_built

    con = _console_err()
    t = time.perf_counter()
    with con.status("bitnet.cpp kit") as st:
        b = ensure_built(jobs=args.jobs, progress=lambda line: st.update(f"bitnet.cpp kit: {line[:100]}"))
    info = {"dir": str(b.dir), "libllama": str(b.libllama), "llama_quantize": str(b.quantize_bin), "built_s": b.built_s,
            "seconds": time.perf_counter() - t, "system_info": b.info.get("system_info"), **b.provenance()}  # fmt: skip
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        how = "reused" if b.built_s is None else f"built in {b.built_s:.0f} s"
        _console().print(f"bitnet.cpp {info['bitnet_commit'][:12]} (llama.cpp fork {info['llama_cpp_commit'][:12]}): {how}\n  {b.dir}")
    return EXIT_OK


# --- protocol ----------------------------------------------------------------------------------
def cmd_protocol_check(args) -> int:
    from crossval import protocol_check

    model = args.model or str(_protocol_model())
    cases = protocol_check.check(args.command, model, timeout=args.timeout)
    ok = protocol_check.passed(cases)
    if args.json:
        print(json.dumps({"command": args.command, "passed": ok, "cases": [vars(c) for c in cases]}, indent=2))
    else:
        rows = [(c.name, {True: "pass", False: "FAIL", None: "—"}[c.ok], c.reason) for c in cases]
        w = max(len(r[0]) for r in rows)
        for name, verdict, reason in rows:
            print(f"{name:<{w}}  {verdict:<4}  {reason}")
        print(f"protocol check: {'passed' if ok else 'FAILED'} ({args.command})")
    return EXIT_OK if ok else 1


def _protocol_model():
    from crossval.synthetic import synthetic_path

    return synthetic_path("qwen2-tiny")


def cmd_gemmacpp_generate(args) -> int:
    from crossval.backends.gemmacpp_capi import capi_generate
    from crossval.gemmacpp_kit import ensure_built
    from crossval.models import resolve_model

    b = ensure_built(resolve_model(args.model), patched=not args.no_patches)
    out = capi_generate(str(b.capi), str(b.sbs), args.prompt, args.max_tokens, repeat=args.repeat, timeout=args.timeout)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(out["text"])
        c = out["cycles"]
        print(f"[{len(c)} create/generate/destroy cycle(s), last {c[-1]['seconds']:.2f} s, RSS {c[0]['rss_mb']:.1f} → "
              f"{c[-1]['rss_mb']:.1f} MB, all {out['nproc']} cores]", file=sys.stderr)  # fmt: skip
    return EXIT_OK


# --- envelope ----------------------------------------------------------------------------------
def cmd_envelope(args) -> int:
    from importlib.resources import files
    from pathlib import Path

    from rich.table import Table

    from crossval.envelope import EnvelopeConfig, read_configs, read_prompts, run_envelope

    pkg = files("crossval") / "prompts"
    configs_file = args.configs or str(pkg / "sampling_configs.tsv")
    prompts_file = args.prompts or str(pkg / "sampling_prompts.txt")
    configs, prompts = read_configs(configs_file), read_prompts(prompts_file)
    if args.only:
        keep = set(args.only.split(","))
        configs = [c for c in configs if c["name"] in keep]
        if not configs:
            raise InputError(f"--only {args.only}: no such config in {configs_file}")
    cfg = EnvelopeConfig(model=args.model, configs=configs, prompts=prompts, reference=args.reference, seeds=args.seeds,
                         seed0=args.seed, steps=args.steps, mode=args.mode, threads=args.threads, timeout=args.timeout,
                         gemmacpp_threads=args.gemmacpp_threads, out_dir=Path(args.out), configs_file=configs_file,
                         prompts_file=prompts_file)  # fmt: skip
    from contextlib import nullcontext

    con = _console_err()
    live = not args.json and con.is_terminal
    with con.status("crossval envelope") if live else nullcontext() as st:
        say = (lambda ev, info: st.update(f"envelope: {info.get('name') or info.get('line', '')}")) if live else None
        path, rec = run_envelope(cfg, say)  # backend failures: main() maps them to exit 3 / 4
    code = EXIT_OK if rec["verdict"]["passed"] else EXIT_PARITY
    if args.json:
        print(json.dumps(rec, indent=2))
        return code
    t = Table("config", "T", "top-k", "samples", "exact seq", "min p (chi²)", "distinct-2 e/r", "mean logprob e/r", "passed",
              title=f"envelope {rec['run_id']} · {rec['backends']['reference']['name']} ({rec['rng']} RNG)")  # fmt: skip
    f = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for c in rec["configs"]:
        t.add_row(c["name"], f"{c['temperature']:g}", str(c["top_k"]), str(c["samples"]), f(c["exact_sequence_match_rate"], ".3f"),
                  f(c["min_p_value"], ".3g"), f"{f(c['distinct']['engine']['distinct_2'], '.2f')}/{f(c['distinct']['reference']['distinct_2'], '.2f')}",
                  f"{f(c['mean_logprob']['engine'], '.2f')}/{f(c['mean_logprob']['reference'], '.2f')}",
                  "yes" if c["passed"] else "[red]no[/red]")  # fmt: skip
    out = _console()
    out.print(t)
    out.print(f"receipt: {path}  ·  {rec['timing']['total_s']:.1f} s  ·  exit {code}")
    for msg in rec["verdict"]["failures"]:
        out.print(f"[red]FAIL[/red] {msg}")
    return code


# --- sweep -------------------------------------------------------------------------------------
def cmd_sweep(args) -> int:
    from pathlib import Path

    from rich.table import Table

    from crossval.sweep import SweepConfig, run_sweep

    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    cfg = SweepConfig(model=args.model, threads=ints(args.threads), batches=ints(args.batches), context=args.context,
                      prompt_tokens=args.prompt_tokens, mode=args.mode, kv_type=args.kv_type, out_dir=Path(args.out),
                      kinds=tuple(args.kinds.split(",")))  # fmt: skip
    if set(cfg.kinds) - {"threads", "batch", "context"} or min(cfg.threads + cfg.batches, default=1) < 1:
        raise InputError("--kinds takes threads,batch,context; thread counts and batch sizes must be ≥ 1")
    path, rec = run_sweep(cfg)
    code = EXIT_OK if rec["verdict"]["passed"] else EXIT_PARITY
    if args.json:
        print(json.dumps(rec, indent=2))
        return code
    t = Table("sweep", "setting", "min cosine", "mean cosine", "KLD mean", "top-1", "engine Δself", "llama.cpp Δself", "passed",
              title=f"sweep {rec['run_id']} · {args.model}")  # fmt: skip
    for kind in ("threads", "batch"):
        for r in rec[kind] or []:
            t.add_row(kind, str(r[kind]), f"{r['cosine_similarity']:.6f}", f"{r['cosine_mean']:.6f}", f"{r['kld_mean']:.2e}",
                      f"{r['top1_agreement']:.3f}", f"{r['engine_self_max_abs']:.2g}", f"{r['reference_self_max_abs']:.2g}",
                      "yes" if r["passed"] else "[red]no[/red]")  # fmt: skip
    ctx = rec["context"]
    for b in (ctx or {}).get("buckets", []):
        t.add_row("context", f"{b['start']}–{b['end']}" + (" (beyond window)" if b["beyond_window"] else ""),
                  f"{b['cosine_similarity']:.6f}", f"{b['cosine_mean']:.6f}", f"{b['kld_mean']:.2e}", f"{b['top1_agreement']:.3f}",
                  "", "", "yes" if b["passed"] else "[red]no[/red]")  # fmt: skip
    con = _console()
    con.print(t)
    if ctx:
        con.print(f"context window: {ctx['window']} ({ctx['window_source']}); sequence {ctx['length']} tokens")
    con.print(f"receipt: {path}  ·  {rec['timing']['total_s']:.1f} s  ·  exit {code}")
    return code


# --- matrix ------------------------------------------------------------------------------------
def cmd_matrix(args) -> int:
    from pathlib import Path

    from rich.table import Table

    from crossval.matrix import MatrixConfig, MatrixError, merge, parse_quants, parse_shard, run_shard

    try:
        if args.action:
            if args.action[0] != "merge" or len(args.action) < 2:
                raise InputError("usage: crossval matrix merge SHARD.json... --out DIR")
            path, rec = merge(args.action[1:], args.out)
        else:
            prompts, set_name = options.prompts_arg(args)
            cfg = MatrixConfig(models=options.models_arg(args), quants=parse_quants(args.quants), prompts=prompts, prompt_set=set_name,
                               shard=parse_shard(args.shard or "1/1"), steps=args.steps, mode=args.mode, threads=args.threads,
                               timeout=args.timeout, n_ctx=args.n_ctx, out_dir=Path(args.out))  # fmt: skip
            con = _console_err()
            say = (lambda ev, info: con.print(f"[dim]{ev}: {info.get('model')} {info.get('quant')} {info.get('prompt', '')}[/dim]")) if not args.json else None
            spath, srec = run_shard(cfg, say)
            if args.shard:  # one shard of several: merge happens later
                if args.json:
                    print(json.dumps(srec, indent=2))
                else:
                    _console().print(f"shard {args.shard}: {len(srec['cells'])} cells → {spath}")
                return EXIT_OK if all(c["passed"] for c in srec["cells"]) else EXIT_PARITY
            path, rec = merge([spath], args.out)
    except MatrixError as e:
        raise InputError(str(e)) from None
    if args.json:
        print(json.dumps(rec, indent=2))
    else:
        t = Table("model", "quant", "prompt", "status", "min cosine", "exact match", "first div", "KLD mean", title=f"matrix {rec['run_id']}")
        f = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        for c in rec["cells"]:
            t.add_row(c["model"], c["quant"], c["prompt"], c["status"] if c["passed"] else f"[red]{c['status']}[/red]",
                      f(c["cosine_similarity"], ".6f"), f(c["exact_match_rate"], ".3f"), f(c["first_divergence_step"], "d"),
                      f(c["kld_mean"], ".2e"))  # fmt: skip
        con = _console()
        con.print(t)
        con.print(f"matrix: {path} (Markdown: {path.parent / 'matrix.md'}) · {rec['counts']}")
    return EXIT_OK if rec["passed"] else EXIT_PARITY


# --- bench -------------------------------------------------------------------------------------
def cmd_bench(args) -> int:
    from pathlib import Path

    from crossval import bench

    threads = [int(t) for t in args.threads.split(",") if t]
    if not threads or min(threads) < 1:
        raise InputError("--threads: comma-separated counts ≥ 1")
    model = args.model
    if args.quant:  # llama.cpp's requantization of the model, as crossval matrix makes and caches it
        from crossval.matrix import MatrixError, parse_quants, variant

        try:
            model = str(variant(args.model, parse_quants(args.quant)[0]))
        except MatrixError as e:
            raise InputError(str(e)) from None
    rec = bench.run_bench(model, threads, args.decode_steps, args.prefill_tokens, args.mode, args.rounds, args.transport_rows)
    code = EXIT_OK
    if args.check:
        rec["check"] = bench.check(rec, bench.latest(rec["model"]["sha256"], Path(args.perf_dir), args.mode), args.tolerance)
        code = EXIT_OK if rec["check"]["passed"] else EXIT_PARITY
    receipts_validate(rec)
    if args.record:
        path = bench.record(rec, Path(args.perf_dir))
    if args.json:
        print(bench.summary_json(rec))
        return code
    from rich.table import Table

    t = Table("threads", "engine decode", "llama.cpp decode", "decode ×", "engine prefill", "llama.cpp prefill", "prefill ×",
              title=f"bench {args.model} (open {rec['open_s'] * 1e3:.0f} ms, load {rec['load_s']:.2f} s)")  # fmt: skip
    for r in rec["results"]:
        t.add_row(str(r["threads"]), f"{r['engine_decode_tok_s']:.1f}", f"{r['llamacpp_decode_tok_s']:.1f}", f"{r['decode_ratio']:.2f}",
                  f"{r['engine_prefill_tok_s']:.0f}", f"{r['llamacpp_prefill_tok_s']:.0f}", f"{r['prefill_ratio']:.2f}")  # fmt: skip
    con = _console()
    con.print(t)
    m = rec["micro"]
    con.print(f"perf_matmul_decode {m['perf_matmul_decode']['type']} {m['perf_matmul_decode']['n_in']}→{m['perf_matmul_decode']['n_out']}: "
              f"{m['perf_matmul_decode']['us']:.0f} µs ({m['perf_matmul_decode']['gflops']:.1f} GFLOP/s) · perf_attention_decode "
              f"kv {m['perf_attention_decode']['kv_len']}: {m['perf_attention_decode']['us']:.0f} µs")  # fmt: skip
    if rec["roofline"]:
        for r in rec["results"]:
            con.print(f"roofline {r['threads']} thread(s): {rec['roofline']['decode_bytes_per_token'] / 1e6:.1f} MB/token at "
                      f"{r['stream_gb_s']:.1f} GB/s → decode engine {r['engine_decode_roofline']:.0%}, llama.cpp "
                      f"{r['llamacpp_decode_roofline']:.0%}; prefill engine {r['engine_prefill_gop_s']:.0f}, llama.cpp "
                      f"{r['llamacpp_prefill_gop_s']:.0f} of Q8_0 peak {r['matmul_peak_gop_s']:.0f} GOP/s")  # fmt: skip
    if rec["transport"]:
        x = rec["transport"]
        cpu = "" if x["server_cpu_s"] is None else f", CPU client {x['client_cpu_s']:.2f} s / server {x['server_cpu_s']:.2f} s"
        con.print(f"external transport ({x['transport']}): {x['rows']} × {x['n_vocab']} float32 logits ({x['bytes'] / 1e6:.0f} MB) in "
                  f"{x['seconds']:.3f} s = {x['mb_s']:.0f} MB/s{cpu}; {x['prefill_share']:.1%} of serving them at the engine's prefill speed")  # fmt: skip
    if args.record:
        con.print(f"recorded: {path}")
    if rec["check"]:
        c = rec["check"]
        con.print(f"check vs {c['baseline'] or '(none)'}: {'ok' if c['passed'] else 'REGRESSION'} {c['note'] or ''}")
        for f in c["failures"]:
            con.print(f"[red]FAIL[/red] {f}")
    return code


def receipts_validate(rec: dict) -> None:
    from crossval import receipts

    receipts.seal(rec)
    receipts.validate(rec)


# --- report ------------------------------------------------------------------------------------
def cmd_report(args) -> int:
    from crossval.report import write_report

    page = write_report(args.target, args.html, png=args.png)
    _console().print(f"report: {page}")
    return EXIT_OK


# --- generate / convert --------------------------------------------------------------------------
def cmd_generate(args) -> int:
    """Greedy generation with our engine and our tokenizer alone (no llama.cpp involved)."""
    from crossval.models import resolve_model
    from engine.generate import Engine
    from engine.tokenizer import Tokenizer
    from engine.tokenizer.chat import stop_tokens

    path = resolve_model(args.model)
    eng = Engine(path, n_ctx=args.n_ctx, kv_type=args.kv_type)
    tok = Tokenizer.from_gguf(eng.gguf)
    ids = tok.encode(args.prompt, add_special=True, parse_special=False)
    gen = eng.generate(ids, args.steps, stop=stop_tokens(tok.vocab))
    text = tok.detokenize(gen.tokens)
    if args.json:
        print(json.dumps({"model": str(path), "prompt_ids": ids, "tokens": gen.tokens, "text": text}))
    else:
        print(args.prompt + text)
    return EXIT_OK


def cmd_tokenize(args) -> int:
    """Our tokenizer's ids and pieces; with --compare, against llama.cpp line by line."""
    from rich.table import Table

    from crossval.models import resolve_model
    from engine.gguf_model import open_gguf
    from engine.tokenizer import Tokenizer

    path = resolve_model(args.model)
    tok = Tokenizer.from_gguf(open_gguf(path))
    con = _console()
    add, special = not args.no_bos, args.parse_special
    if args.file:
        try:
            lines = open(args.file, encoding="utf-8").read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read {args.file}: {e}") from None
    elif args.text is not None:
        lines = [args.text]
    else:
        raise InputError("give TEXT or --file F")
    if not args.compare:
        for line in lines:
            ids = tok.encode(line, add, special)
            if args.json:
                print(json.dumps({"text": line, "ids": ids, "pieces": [tok.token_to_piece(i).decode("utf-8", "replace") for i in ids]}))
            else:
                con.print(" ".join(f"{i}:{tok.token_to_piece(i).decode('utf-8', 'replace')!r}" for i in ids), markup=False)
        return EXIT_OK
    from crossval.backends.llamacpp import LlamaCppBackend

    bad = []
    with LlamaCppBackend(path, vocab_only=True) as ref:
        for n, line in enumerate(lines, 1):
            a, b = tok.encode(line, add, special), ref.tokenize(line, add, special)
            if a != b:
                bad.append((n, line, a, b))
    print(f"{len(lines) - len(bad)}/{len(lines)} lines match")
    for n, line, a, b in bad[: args.show]:
        i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        t = Table("", "index", "ours", "llama.cpp", title=f"line {n}: {line[:60]!r} (first difference at token {i})")
        for k in range(max(0, i - 4), i + 4):
            fmt = lambda ids: f"{ids[k]} {tok.token_to_piece(ids[k]).decode('utf-8', 'replace')!r}" if k < len(ids) else "-"  # noqa: E731
            t.add_row(">" if k == i else "", str(k), fmt(a), fmt(b))
        con.print(t)
    return EXIT_PARITY if bad else EXIT_OK


def cmd_convert(args) -> int:
    from crossval.models import resolve_model
    from engine.convert import write_float_copy

    out = write_float_copy(resolve_model(args.model), args.out, args.type)
    print(out)
    return EXIT_OK


def cmd_imatrix(args) -> int:
    from pathlib import Path

    from crossval import imatrix
    from crossval.models import resolve_model

    src = resolve_model(args.model)
    text_file = Path(args.text) if args.text else imatrix.TEXT
    try:
        text = text_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {text_file}: {e}") from None
    im = imatrix.compute(src, text, args.chunk_size, dataset=text_file.name)
    try:
        out = imatrix.write(im, args.out)
    except OSError as e:
        raise InputError(f"cannot write {args.out}: {e}") from None
    print(f"{out}: {len(im.sums)} matrices, {im.chunk_count} chunks of {im.chunk_size}")
    return EXIT_OK


# --- run / validate / diff ----------------------------------------------------------------------
def cmd_run(args) -> int:
    from pathlib import Path

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from crossval.run import RunConfig, run

    if args.deterministic:
        args.threads = 1
    prompts, set_name = options.prompts_arg(args)
    perturb = None
    if args.perturb_layer is not None:
        perturb = (args.perturb_layer, args.perturb_scale)
    sampling = None
    if args.temperature is not None and args.temperature > 0:
        from engine.sampling import SamplingParams

        sampling = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, seed=args.seed)
    cfg = RunConfig(
        models=options.models_arg(args), prompts=prompts, prompt_set=set_name, steps=args.steps, threads=args.threads,
        seed=args.seed, n_ctx=args.n_ctx, mode=args.mode, kv_type=args.kv_type, reference=args.reference,
        timeout=args.timeout, out_dir=Path(args.out), require_reference=args.require_reference,
        deterministic=args.deterministic, llama_lib=args.llama_lib, thresholds_file=args.thresholds, perturb=perturb,
        keep_going=args.keep_going, sampling=sampling, engine=args.engine, prefix_end=args.prefix_end,
        gemmacpp_threads=args.gemmacpp_threads, gemmacpp_patched=not args.gemmacpp_no_patches, three_way=args.three_way,
        localise=args.localise, third=args.third,
    )  # fmt: skip
    if args.sign:
        from crossval.signing import load_private_key

        cfg.sign_key = load_private_key(args.sign)
    con = _console()
    total = len(cfg.models) * len(prompts)
    quiet = args.json or not con.is_terminal
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=_console_err(), disable=quiet, transient=True) as prog:  # fmt: skip
        task = prog.add_task("crossval run", total=total)

        def progress(event, info):
            if event == "model":
                prog.update(task, description=f"{info['model']}")
            elif event == "build":  # the gemma.cpp kit building (first use only)
                prog.update(task, description=f"gemma.cpp kit: {info['line'][:70]}")
            elif event == "receipt":
                prog.advance(task)

        res = run(cfg, progress)
    summary = json.loads(res.summary_path.read_text())
    if summary.get("interrupted"):
        i = summary["interrupted"]
        _err(f"interrupted by {i['signal']}: {i['receipts_written']} finished receipt(s) and a summary marked interrupted in {res.out_dir}")
    if args.json:
        print(json.dumps(summary, indent=2))
        return res.exit_code
    t = Table("model", "prompt", "tokens", "min cosine", "exact match", "first div", "KLD mean", "status", title=f"run {res.run_id}")
    for r in res.rows:
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        tok = "-" if r["tokens_match"] is None else ("match" if r["tokens_match"] else "DIFF")
        st = r["status"] if r["passed"] else f"[red]{r['status']}[/red]"
        t.add_row(r["model"], r["prompt"], tok, fmt(r["cosine_similarity"], ".6f"), fmt(r["exact_match_rate"], ".3f"),
                  "-" if r["first_divergence_step"] is None else str(r["first_divergence_step"]), fmt(r["kld_mean"], ".2e"), st)  # fmt: skip
    con.print(t)
    con.print(f"receipts: {res.out_dir}  ·  {summary['total_s']:.1f} s  ·  exit {res.exit_code}")
    for r in res.rows:
        for f in r["failures"]:
            con.print(f"[red]FAIL[/red] {r['model']}/{r['prompt']}: {f}", markup=True)
        if r.get("localised"):
            loc = r["localised"]
            con.print(f"      first diverging layer: {loc['layer']} ({loc['stage']}, NMSE {loc['nmse']:.3g})")
        if r.get("odd_one_out"):
            con.print(f"      {r['model']}/{r['prompt']}: odd one out at the first three-way divergence: {r['odd_one_out']}")
    return res.exit_code


def cmd_validate(args) -> int:
    """Exit 0 when every file is a valid receipt (and, with --verify, validly signed); 1 when a
    receipt fails its schema, seal or signature; 2 when a file is not a receipt at all (unreadable,
    too large, not JSON, NaN/Infinity, too deep, an unknown kind)."""
    from crossval.receipts import MalformedReceipt, ReceiptError, read_valid

    key = None
    if args.verify:
        from crossval.signing import load_public_key, verify_file

        key = load_public_key(args.verify)
    bad = malformed = 0
    for p in args.paths:
        try:
            if key is None and str(p).endswith(".intoto.jsonl"):
                raise MalformedReceipt(f"{p}: a signed receipt (DSSE envelope): check it with --verify PUBKEY")
            verify_file(p, key) if key is not None else read_valid(p)
            if not args.quiet:
                print(f"ok    {p}")
        except ReceiptError as e:
            bad += 1
            malformed += isinstance(e, MalformedReceipt)
            print(f"FAIL  {e}", file=sys.stderr)
    return EXIT_INPUT if malformed else (1 if bad else 0)


def cmd_keygen(args) -> int:
    from crossval.signing import keygen, keyid, load_public_key

    priv, pub = keygen(args.key)
    print(f"private key: {priv} (keep it secret)\npublic key:  {pub} (keyid {keyid(load_public_key(pub))[:16]})")
    return EXIT_OK


def cmd_diff(args) -> int:
    from pathlib import Path

    from rich.table import Table

    from crossval.diff import diff_receipts, diff_runs
    from crossval.receipts import read_valid

    if Path(args.old).is_dir() and Path(args.new).is_dir():
        d = diff_runs(args.old, args.new)
        if args.json:
            print(json.dumps(d, indent=2))
            return 0
        t = Table("receipt", "field", "old", "new", "change", title=f"{args.old} → {args.new}")
        for pair in d["pairs"]:
            for c in pair["changes"]:
                t.add_row(pair["file"], c["field"], _short(c["old"]), _short(c["new"]), _direction(c.get("direction", "")))
        con = _console()
        con.print(t if t.row_count else f"no differences in {len(d['pairs'])} paired receipts")
        for f in d["only_old"]:
            con.print(f"only in {args.old}: {f}")
        for f in d["only_new"]:
            con.print(f"only in {args.new}: {f}")
        return 0
    a, b = read_valid(args.old), read_valid(args.new)
    for path, rec in ((args.old, a), (args.new, b)):
        if rec["kind"] != "parity":
            raise InputError(f"{path}: a {rec['kind']} receipt; diff compares parity receipts (or two run directories)")
    changes = diff_receipts(a, b)
    if args.json:
        print(json.dumps(changes, indent=2))
        return 0
    t = Table("field", "old", "new", "change", title=f"{args.old} → {args.new}")
    for c in changes:
        t.add_row(c["field"], _short(c["old"]), _short(c["new"]), _direction(c.get("direction", "")))
    _console().print(t if changes else "no differences")
    return 0


def _short(v) -> str:
    return format(v, ".6g") if isinstance(v, float) else str(v)


def _direction(d: str) -> str:
    return {"better": "[green]better[/green]", "worse": "[red]worse[/red]"}.get(d, d)


def cmd_trend(args) -> int:
    from rich.table import Table

    from crossval.diff import TREND_METRICS, trend

    metrics = args.metrics.split(",") if args.metrics else list(TREND_METRICS)
    unknown = set(metrics) - set(TREND_METRICS)
    if unknown:
        raise InputError(f"--metrics: unknown metric(s) {', '.join(sorted(unknown))} (known: {', '.join(TREND_METRICS)})")
    rows = trend(args.runs, metrics)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    t = Table("receipt", "metric", *[f"run {i + 1}" for i in range(len(args.runs))], "Δ first→last", "change",
              title="trend: " + " → ".join(args.runs))  # fmt: skip
    for r in rows:
        if args.changed and r["direction"] == "same":
            continue
        t.add_row(r["file"], r["metric"], *[_short(v) if v is not None else "–" for v in r["values"]],
                  "" if r["delta"] is None else format(r["delta"], "+.3g"), _direction(r["direction"]))  # fmt: skip
    _console().print(t)
    return 0


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (exit 2) like every other bad input."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_INPUT)


def build_parser() -> argparse.ArgumentParser:
    add = options.add
    p = Parser(prog="crossval", description="Engine vs llama.cpp parity harness.", epilog=EPILOG)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=Parser)

    m = sub.add_parser("models", help="fetch or list the real models (from PyPI packages)", epilog=EPILOG)
    msub = m.add_subparsers(dest="models_cmd", required=True, parser_class=Parser)
    f = msub.add_parser("fetch", help="download the real models into the cache")
    f.add_argument("names", nargs="*", help="smollm2, gemma3-270m, llama-data (llama.cpp's vocab test files "
                   "and chat templates from the llama-cpp-python sdist); default: all")
    f.set_defaults(func=cmd_models_fetch)
    ls = msub.add_parser("list", help="list known real models and whether they are cached")
    add(ls, "json")
    ls.set_defaults(func=cmd_models_list)

    r = sub.add_parser("run", help="compare the engine with a reference on a prompt set; write receipts", epilog=EPILOG)
    add(r, "model", "models", "prompts", "prompt_file", "steps", "mode", "threads", "seed", "n_ctx", "kv_type", "reference",
        "timeout", "gemmacpp_threads", "out", "json", out="receipts/runs")  # fmt: skip
    r.add_argument("--temperature", type=float, default=None, help="sample instead of greedy (llama.cpp's chain: "
                   "top-k → top-p → min-p → temperature → dist); 0 or unset = greedy")
    r.add_argument("--top-k", type=int, default=40)
    r.add_argument("--top-p", type=float, default=0.95)
    r.add_argument("--min-p", type=float, default=0.05)
    r.add_argument("--engine", default="engine", help="the side under test, any backend name as for --reference (default: engine)")
    r.add_argument("--three-way", action="store_true", help="also run the third of engine/llamacpp/gemmacpp and name "
                   "the odd one out wherever the three disagree")
    r.add_argument("--third", help="the third backend of --three-way: gemmacpp, llamacpp, engine, or transformers "
                   "(Hugging Face, loads the GGUF itself; pip install -e '.[triangulate]')")
    r.add_argument("--prefix-end", type=options.non_negative_int, default=0, help="prefix-LM attention: prompt positions "
                   "before N attend to each other both ways (gemma.cpp semantics); 0 = causal")
    r.add_argument("--localise", choices=["auto", "always", "never"], default="auto", help="per-layer comparison with "
                   "the reference's graph tensors: auto = only when a comparison fails its thresholds (default)")
    r.add_argument("--gemmacpp-no-patches", action="store_true", help="use upstream gemma.cpp without the kit's two fixes")
    r.add_argument("--llama-lib", help="directory holding another libllama build of llama.cpp's current C API (LLAMA_CPP_LIB_PATH); bitnet.cpp: --reference bitnetcpp")
    r.add_argument("--thresholds", help="JSON file overriding threshold fields")
    r.add_argument("--require-reference", action="store_true", help="exit 3 when the reference is unavailable")
    r.add_argument("--deterministic", action="store_true", help="threads=1, fixed seed (recorded in receipts)")
    r.add_argument("--keep-going", action="store_true", help="after a reference timeout or crash, go on with the next prompt")
    r.add_argument("--sign", metavar="KEY", help="also write each receipt signed with this Ed25519 private key "
                   "(crossval keygen): a DSSE envelope <model>__<prompt>.intoto.jsonl beside it (docs/receipts.md)")
    r.add_argument("--perturb-layer", type=int, default=None, help=argparse.SUPPRESS)  # test hook
    r.add_argument("--perturb-scale", type=float, default=1.5, help=argparse.SUPPRESS)
    r.set_defaults(func=cmd_run)

    kg = sub.add_parser("keygen", help="a new Ed25519 key pair for signed receipts: KEY (private, mode 0600) and KEY.pub", epilog=EPILOG)
    kg.add_argument("key", metavar="KEY", help="where to write the private key (never overwritten)")
    kg.set_defaults(func=cmd_keygen)

    b = sub.add_parser("bench", help="engine vs llama.cpp tok/s, same run and threads → perf receipt", epilog=EPILOG)
    add(b, "model", "mode", "json", model="smollm2")
    b.add_argument("--threads", default="1,2", help="thread counts, comma-separated (both engines use the same)")
    b.add_argument("--quant", help="bench the model requantized by llama.cpp to this type (crossval matrix's variants)")
    b.add_argument("--decode-steps", type=options.positive_int, default=64)
    b.add_argument("--prefill-tokens", type=options.positive_int, default=128)
    b.add_argument("--rounds", type=options.positive_int, default=1, help="time each engine this many times, alternating "
                   "which goes first, and keep each one's best (a machine shared with other work)")
    b.add_argument("--transport-rows", type=options.non_negative_int, default=650,
                   help="time the external protocol moving this many rows of the model's logits (0: skip; default 650)")
    b.add_argument("--record", action="store_true", help="append the perf receipt to --perf-dir (the trend)")
    b.add_argument("--check", action="store_true", help="exit 1 when a ratio fell more than --tolerance below the "
                   "latest recorded receipt of this model (and mode)")
    b.add_argument("--tolerance", type=float, default=0.25)
    b.add_argument("--perf-dir", default="receipts/perf")
    b.set_defaults(func=cmd_bench)

    mx = sub.add_parser("matrix", help="prompt × quant matrix (llama.cpp quantizes the variants); 'matrix merge' joins shards",
                        epilog=EPILOG)  # fmt: skip
    mx.add_argument("action", nargs="*", help="empty to run; or: merge SHARD.json...")
    add(mx, "model", "models", "prompts", "prompt_file", "steps", "mode", "threads", "timeout", "n_ctx", "out", "json",
        n_ctx=4096, out="receipts/matrix")  # byte-fallback vocabularies (the synthetic models) make long prompts long  # fmt: skip
    mx.add_argument("--quants", default="Q8_0,Q6_K,Q5_K_M,Q5_0,Q4_K_M,Q4_1,Q4_0,Q3_K_M,Q2_K,F16")
    mx.add_argument("--shard", help="i/n: run the cells k with k mod n = i − 1 (then `matrix merge`)")
    mx.set_defaults(func=cmd_matrix)

    sw = sub.add_parser("sweep", help="invariance sweeps: threads, prefill batch sizes, context length", epilog=EPILOG)
    add(sw, "model", "mode", "kv_type", "timeout", "out", "json", model="smollm2", out="receipts/sweeps")
    sw.add_argument("--kinds", default="threads,batch,context")
    sw.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    sw.add_argument("--batches", default="512,64,7,1", help="prefill batch sizes (llama.cpp n_batch = n_ubatch; engine chunks)")
    sw.add_argument("--context", type=options.positive_int, default=1024, help="longest sequence of the context sweep")
    sw.add_argument("--prompt-tokens", type=options.positive_int, default=96, help="prompt length of the threads and batch sweeps")
    sw.set_defaults(func=cmd_sweep)

    rp = sub.add_parser("report", help="self-contained HTML pages of a run, matrix, sweep, envelope or the bench trend", epilog=EPILOG)
    rp.add_argument("target", help="a run directory, a folder of runs (the newest), a matrix/sweep/envelope receipt, or receipts/perf")
    rp.add_argument("--html", required=True, metavar="OUT", help="output directory: OUT/index.html, OUT/prompts/*.html, OUT/plots/*.png")
    rp.add_argument("--png", action="store_true", help="also write OUT/screenshots/*.png (headless Chromium)")
    rp.set_defaults(func=cmd_report)

    e = sub.add_parser("envelope", help="sampling compatibility envelope: configs × prompts × seeds on two backends", epilog=EPILOG)
    add(e, "model", "mode", "threads", "timeout", "gemmacpp_threads", "out", "json", model="gemma3-270m", out="receipts/envelope")
    e.add_argument("--configs", help="sampling configs TSV (name, temperature, top_k, top_p, min_p); default: the bundled set")
    e.add_argument("--prompts", help="prompts, one per line; default: the bundled set")
    e.add_argument("--only", help="comma-separated config names to run")
    e.add_argument("--reference", choices=["llamacpp", "gemmacpp"], default="llamacpp")
    e.add_argument("--seeds", type=options.positive_int, default=8, help="seeds per config and prompt (K)")
    e.add_argument("--seed", type=int, default=1, help="first seed")
    e.add_argument("--steps", type=options.positive_int, default=16, help="sampled steps per sequence (default 16)")
    e.set_defaults(func=cmd_envelope)

    gc = sub.add_parser("gemmacpp", help="the real gemma.cpp reference (the gemma.cpp kit)", epilog=EPILOG)
    gsub = gc.add_subparsers(dest="gemmacpp_cmd", required=True, parser_class=Parser)
    gb = gsub.add_parser("build", help="build the kit and convert the model into the crossval cache (reused when cached)")
    add(gb, "model", "json", model="gemma3-270m")
    gb.add_argument("--no-patches", action="store_true", help="upstream gemma.cpp without the kit's two fixes")
    gb.add_argument("--jobs", type=options.positive_int, default=None, help="parallel compile jobs (default: all cores)")
    gb.set_defaults(func=cmd_gemmacpp_build)
    gg = gsub.add_parser("generate", help="greedy text through gemma.cpp's C API (cffi, in a child process)")
    add(gg, "model", "timeout", "json", model="gemma3-270m")
    gg.add_argument("--prompt", default="The capital of France is")
    gg.add_argument("--max-tokens", type=options.positive_int, default=16)
    gg.add_argument("--repeat", type=options.positive_int, default=1, help="create/generate/destroy cycles in one process (lifecycle check)")
    gg.add_argument("--no-patches", action="store_true")
    gg.set_defaults(func=cmd_gemmacpp_generate)

    bc = sub.add_parser("bitnetcpp", help="the real bitnet.cpp reference (the bitnet.cpp kit)", epilog=EPILOG)
    bsub = bc.add_subparsers(dest="bitnetcpp_cmd", required=True, parser_class=Parser)
    bb = bsub.add_parser("build", help="build the kit into the crossval cache (reused when cached; done on first use too)")
    add(bb, "json")
    bb.add_argument("--jobs", type=options.positive_int, default=None, help="parallel compile jobs (default: all cores)")
    bb.set_defaults(func=cmd_bitnetcpp_build)

    pc = sub.add_parser("protocol", help="the external protocol: 'protocol check CMD' runs a server through every case", epilog=EPILOG)
    psub = pc.add_subparsers(dest="protocol_cmd", required=True, parser_class=Parser)
    pk = psub.add_parser("check", help="every request, malformed input, deadline and shutdown; a pass/fail table (exit 0/1)")
    pk.add_argument("command", help="the server's command line, e.g. 'python -m crossval.serve'")
    pk.add_argument("--model", help="the GGUF path the server loads (default: the synthetic qwen2-tiny model)")
    pk.add_argument("--timeout", type=options.positive_float, default=30.0, help="seconds each reply may take (default 30)")
    add(pk, "json")
    pk.set_defaults(func=cmd_protocol_check)

    g = sub.add_parser("generate", help="greedy generation with the engine", epilog=EPILOG)
    add(g, "model", "steps", "n_ctx", "kv_type", "json")
    g.add_argument("--prompt", default="The capital of France is")
    g.set_defaults(func=cmd_generate)

    v = sub.add_parser("validate", help="check receipts against their schema (exit 1 on any invalid file)", epilog=EPILOG)
    v.add_argument("paths", nargs="+")
    v.add_argument("--quiet", action="store_true")
    v.add_argument("--verify", metavar="PUBKEY", help="also require a valid signature by this Ed25519 public key: give the "
                   "envelopes (*.intoto.jsonl) or the receipts (each needs its envelope beside it)")
    v.set_defaults(func=cmd_validate)

    tr = sub.add_parser("trend", help="metrics of the same receipts over several runs (oldest first), with direction", epilog=EPILOG)
    tr.add_argument("runs", nargs="+", help="run directories, oldest first (e.g. receipts/baselines receipts/runs/<id>)")
    tr.add_argument("--metrics", help="comma-separated parity metrics (default: min/mean cosine, KLD, top-1, exact match, first div)")
    tr.add_argument("--changed", action="store_true", help="only rows whose metric moved")
    add(tr, "json")
    tr.set_defaults(func=cmd_trend)

    d = sub.add_parser("diff", help="what moved between two receipts, or two run directories (paired by model__prompt)", epilog=EPILOG)
    d.add_argument("old")
    d.add_argument("new")
    add(d, "json")
    d.set_defaults(func=cmd_diff)

    tk = sub.add_parser("tokenize", help="our tokenizer's ids and pieces; --compare checks llama.cpp", epilog=EPILOG)
    tk.add_argument("text", nargs="?")
    add(tk, "model", "json")
    tk.add_argument("--file", help="tokenize every line of this file")
    tk.add_argument("--compare", action="store_true", help="compare with llama.cpp; print N/M lines match, exit 1 on any mismatch")
    tk.add_argument("--parse-special", action="store_true")
    tk.add_argument("--no-bos", action="store_true", help="do not add BOS/EOS (add_special=false)")
    tk.add_argument("--show", type=int, default=5, help="mismatching lines to show")
    tk.set_defaults(func=cmd_tokenize)

    c = sub.add_parser("convert", help="write an F32/F16 copy of a GGUF (tensors dequantized)", epilog=EPILOG)
    add(c, "model")
    c.add_argument("--type", choices=["f32", "f16"], default="f32")
    c.add_argument("--out", required=True, help="output GGUF path")
    c.set_defaults(func=cmd_convert)
    im = sub.add_parser("imatrix", help="an importance matrix (llama.cpp imatrix tool's GGUF) from the engine's activations",
                        epilog=EPILOG)  # fmt: skip
    add(im, "model")
    im.add_argument("--text", help="calibration text file (default: crossval/prompts/imatrix.txt)")
    im.add_argument("--chunk-size", type=options.positive_int, default=256, help="tokens per chunk (the tool's -c)")
    im.add_argument("--out", required=True, help="output .imatrix.gguf path")
    im.set_defaults(func=cmd_imatrix)
    return p


# --- process set-up and errors -------------------------------------------------------------------
def prepare(args) -> None:
    """Before any work: resolve `--mode auto` (crossval/modes.py; args.notice says so when float is
    the fallback, printed after the command's output), then limit numpy's BLAS pool through threadpoolctl — to one thread in faithful
    mode, where the native kernels' OpenMP threads do the work, else to --threads; and numpy's large
    arrays on ordinary pages (crossval/process.py small_pages)."""
    from crossval.modes import resolve_mode
    from crossval.process import limit_blas, small_pages

    small_pages()
    args.notice = None
    if getattr(args, "mode", None) is not None:
        args.mode, args.notice = resolve_mode(args.mode, getattr(args, "engine", "engine"), getattr(args, "reference", None) or "llamacpp")
    threads = getattr(args, "threads", 1)
    if isinstance(threads, str):  # bench / sweep: a list; the commands set each setting's own limit
        threads = max((int(t) for t in threads.split(",") if t.strip().isdigit()), default=1)
    limit_blas(1 if getattr(args, "mode", None) == "faithful" else threads)


def input_errors() -> tuple[type[BaseException], ...]:
    """Exceptions from outside crossval's hierarchy that mean bad input (exit 2): the engine never
    imports crossval, so its errors are listed here."""
    from engine.gguf_model import GGUFError
    from engine.kv_cache import KVCacheFull
    from engine.quants import UnsupportedTypeError
    from engine.tokenizer.chat import ChatTemplateError
    from engine.tokenizer.pretokenize import UnsupportedPreTokenizer
    from engine.tokenizer.vocab import TokenizerError

    return (GGUFError, UnsupportedTypeError, ChatTemplateError, TokenizerError, UnsupportedPreTokenizer, KVCacheFull)


def unavailable_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning a reference cannot run here (exit 3)."""
    from crossval.backends.bitnetcpp_capi import BitnetCppError
    from crossval.backends.gemmacpp_capi import CapiError
    from crossval.backends.llamacpp import LlamaCppError
    from crossval.bitnetcpp_kit import KitError as BitnetKitError
    from crossval.gemmacpp_kit import KitError

    return (LlamaCppError, KitError, CapiError, BitnetKitError, BitnetCppError)


def exit_code_for(e: BaseException) -> int:
    if isinstance(e, CrossvalError):
        return e.exit_code
    if isinstance(e, input_errors()):
        return EXIT_INPUT
    if isinstance(e, unavailable_errors()):
        return EXIT_NO_REFERENCE
    return EXIT_INTERNAL


def save_traceback(e: BaseException) -> str:
    """Write the traceback to <cache>/errors/ (or the temporary directory); → its path."""
    import os
    import tempfile
    import time
    import traceback
    from pathlib import Path

    from crossval.models import cache_dir

    text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    text = f"crossval {' '.join(sys.argv[1:])}\n\n{text}"
    name = f"crossval-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}.txt"
    for d in (cache_dir() / "errors", Path(tempfile.gettempdir())):
        try:
            d.mkdir(parents=True, exist_ok=True)
            (d / name).write_text(text)
            return str(d / name)
        except OSError:
            continue
    return "(could not be saved)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from crossval import signals

    try:
        with signals.interruptible():  # SIGINT/SIGTERM: unwind once (exit 130/143), a second one exits at once
            prepare(args)
            code = args.func(args)
        if args.notice:
            print(f"crossval: note: {args.notice}", file=sys.stderr)
        return code
    except KeyboardInterrupt as e:  # signals.Interrupted, or a Ctrl-C outside interruptible()
        _err(str(e) or "interrupted")
        return getattr(e, "exit_code", 130)
    except Exception as e:  # every failure ends in one line and its exit code (crossval/errors.py)
        if isinstance(e, BrokenPipeError) and _reader_gone():  # not a backend's pipe: our own output's
            return _quiet_exit_on_closed_pipe()
        code = exit_code_for(e)
        msg = (str(e).splitlines() or [""])[0] or type(e).__name__
        if code == EXIT_INTERNAL:
            msg = f"internal error ({type(e).__name__}: {msg[:200]}); traceback saved to {save_traceback(e)}"
        _err(msg)
        return code


if __name__ == "__main__":
    sys.exit(main())
