"""Chat templates: `tokenizer.chat_template` (Jinja) rendered the way llama-cpp-python renders it
(llama_chat_format.Jinja2ChatFormatter: a sandboxed environment with trim_blocks and
lstrip_blocks, `raise_exception`, `strftime_now`, bos/eos token strings, add_generation_prompt)."""

from __future__ import annotations

from datetime import datetime


class ChatTemplateError(ValueError):
    pass


def _raise(message: str):
    raise ChatTemplateError(message)


def render(template: str, messages: list[dict], bos_token: str = "", eos_token: str = "",
           add_generation_prompt: bool = True, **extra) -> str:  # fmt: skip
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    try:
        tpl = env.from_string(template)
        return tpl.render(
            messages=messages, bos_token=bos_token, eos_token=eos_token, add_generation_prompt=add_generation_prompt,
            raise_exception=_raise, strftime_now=lambda fmt: datetime.now().strftime(fmt), **extra,
        )  # fmt: skip
    except TemplateError as e:
        raise ChatTemplateError(f"chat template error: {e}") from None


def fallback(messages: list[dict]) -> str:
    """For a model without a template: plain `role: content` lines and an assistant cue."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def stop_tokens(vocab) -> set[int]:
    """End-of-generation ids: EOS and, when the vocabulary has them, EOT (LLaMA-3's <|eot_id|>,
    ChatML's <|im_end|>, gemma's <end_of_turn>) and EOM (LLaMA-3.1's <|eom_id|>) — chat turns end
    with EOT, documents with EOS."""
    return {t for t in (vocab.eos, vocab.eot, vocab.eom) if t is not None}
