"""Command-line options shared by several commands, declared once with one set of defaults.

A command picks the ones it takes: `options.add(parser, "model", "steps", "mode", "threads")`;
a command whose meaning differs may give its own default (`options.add(p, "out",
out="receipts/sweeps")`) — out directories and the model a command starts from differ by nature,
thread counts, timeouts, cache types and modes do not. New commands should use these names so
`--mode`, `--timeout` and the rest mean the same thing everywhere.
"""

from __future__ import annotations

import argparse

from engine.generate import MODES as ENGINE_MODES


def _whole_number_at_least(s: str, low: int) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {s!r}") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"expected a number ≥ {low}, not {v}")
    return v


def positive_int(s: str) -> int:
    return _whole_number_at_least(s, 1)


def non_negative_int(s: str) -> int:
    return _whole_number_at_least(s, 0)


def positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {s!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, not {s}")
    return v


BACKEND_HELP = ("llamacpp (llama.cpp in a child process), gemmacpp (the real gemma.cpp, built from the kit on first use), "
                "engine, transformers, or external:CMD (a child process speaking the JSON-lines protocol of "
                "docs/backends.md, e.g. 'external:python -m crossval.serve')")  # fmt: skip

# name → (flags, argparse keywords). The one place these defaults live.
OPTIONS: dict[str, tuple[tuple[str, ...], dict]] = {
    "model": (("--model",), dict(help="one model: short name (smollm2, gemma3-270m) or GGUF path")),
    "models": (("--models",), dict(help="several models, comma-separated (default: both real models)")),
    "prompts": (("--prompts",), dict(default="default", help="prompt set name: default, chat")),
    "prompt_file": (("--prompt-file",), dict(help="prompt file: JSON lines ({id, text} or {id, messages}) or one prompt per line")),
    "steps": (("--steps",), dict(type=positive_int, default=32, help="greedy steps compared per prompt (default 32)")),
    "mode": (("--mode",), dict(choices=["auto", *ENGINE_MODES], default="auto",
                               help="the engine's arithmetic; auto (default): faithful against llama.cpp when the native "
                                    "kernels are built, bf16 against gemma.cpp, else float")),  # fmt: skip
    "threads": (("--threads",), dict(type=positive_int, default=1, help="threads of both engines (default 1)")),
    "kv_type": (("--kv-type",), dict(choices=["f16", "f32"], default="f16", help="KV cache type of both engines (default f16)")),
    "n_ctx": (("--n-ctx",), dict(type=positive_int, default=2048, help="context size (default 2048)")),
    "timeout": (("--timeout",), dict(type=positive_float, default=300.0,
                                     help="seconds per request to a backend running apart (default 300)")),  # fmt: skip
    "seed": (("--seed",), dict(type=int, default=42, help="seed of the sampler chain (std::mt19937; default 42)")),
    "reference": (("--reference",), dict(default="llamacpp", help="reference backend (default llamacpp): " + BACKEND_HELP)),
    "gemmacpp_threads": (("--gemmacpp-threads",), dict(type=positive_int, default=2,
                                                       help="gemma.cpp's --num_threads (its results depend on it; default 2)")),  # fmt: skip
    "out": (("--out",), dict(help="output directory")),
    "json": (("--json",), dict(action="store_true", help="print JSON instead of a table")),
}


def add(parser: argparse.ArgumentParser, *names: str, **defaults) -> argparse.ArgumentParser:
    """Add the named shared options to parser; keyword arguments override a default (or help)."""
    for name in names:
        flags, kw = OPTIONS[name]
        kw = dict(kw)
        if name in defaults:
            kw["default"] = defaults.pop(name)
            if "help" in kw and "(default" in kw["help"]:
                kw["help"] = kw["help"].split(" (default")[0]
            if name == "out":
                kw["help"] = f"output directory (default {kw['default']})"
        parser.add_argument(*flags, **kw)
    if defaults:
        raise TypeError(f"defaults for options not added: {', '.join(defaults)}")
    return parser


def models_arg(args) -> list[str]:
    """--models a,b | --model a | both real models."""
    from crossval.models import REAL_MODELS

    if getattr(args, "models", None):
        return [m for m in args.models.split(",") if m]
    if getattr(args, "model", None):
        return [args.model]
    return list(REAL_MODELS)


def prompts_arg(args):
    """(prompts, set name or None) from --prompt-file or --prompts."""
    from crossval.errors import InputError
    from crossval.prompts import PromptError, load_file, load_set

    try:
        if args.prompt_file:
            return load_file(args.prompt_file), None
        return load_set(args.prompts), args.prompts
    except (PromptError, OSError, UnicodeDecodeError) as e:
        raise InputError(str(e).splitlines()[0]) from None
