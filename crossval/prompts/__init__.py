"""Prompt sets: JSON lines files in this directory, one prompt per line.

A line is {"id", "kind", "text"} or {"id", "kind", "messages": [{"role", "content"}, ...]}; a
messages prompt is rendered with the model's chat template (tokenizer.chat_template) the way
llama-cpp-python renders it (Jinja2 sandbox, trim_blocks, lstrip_blocks, add_generation_prompt),
or, for a model without a template, as plain "role: content" lines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from crossval.errors import InputError

PROMPT_DIR = Path(__file__).parent


class PromptError(InputError):
    pass


@dataclass(frozen=True)
class Prompt:
    id: str
    kind: str
    text: str | None = None
    messages: tuple[dict, ...] = field(default_factory=tuple)

    @property
    def is_chat(self) -> bool:
        return bool(self.messages)


def available_sets() -> list[str]:
    return sorted(p.stem for p in PROMPT_DIR.glob("*.jsonl"))


def load_set(name: str) -> list[Prompt]:
    p = PROMPT_DIR / f"{name}.jsonl"
    if not p.is_file():
        raise PromptError(f"unknown prompt set {name!r}; available: {', '.join(available_sets())}")
    return load_file(p)


def load_file(path: str | Path) -> list[Prompt]:
    """A .jsonl/.json file holds JSON lines; any other file holds one plain-text prompt per line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PromptError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    except OSError as e:
        raise PromptError(f"{path}: cannot read ({e.strerror})") from None
    if path.suffix.lower() not in (".jsonl", ".json"):
        lines = [x for x in text.splitlines() if x.strip()]
        if not lines:
            raise PromptError(f"{path}: no prompts")
        return [Prompt(f"line{n}", "text", x) for n, x in enumerate(lines, 1)]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(d, dict):
            raise PromptError(f"{path}:{n}: a prompt line must be a JSON object")
        if "messages" in d:
            out.append(Prompt(d.get("id", f"line{n}"), d.get("kind", "chat"), None, tuple(d["messages"])))
        elif "text" in d:
            out.append(Prompt(d.get("id", f"line{n}"), d.get("kind", "text"), d["text"]))
        else:
            raise PromptError(f"{path}:{n}: a prompt needs 'text' or 'messages'")
    if not out:
        raise PromptError(f"{path}: no prompts")
    return out


def render(prompt: Prompt, chat_template: str | None, bos_token: str = "", eos_token: str = "") -> str:
    """The text to tokenize: the prompt's text, or its messages through the chat template."""
    from engine.tokenizer.chat import fallback
    from engine.tokenizer.chat import render as render_chat

    if not prompt.is_chat:
        return prompt.text or ""
    if not chat_template:
        return fallback(list(prompt.messages))
    return render_chat(chat_template, list(prompt.messages), bos_token=bos_token, eos_token=eos_token)
