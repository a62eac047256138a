"""Render a record as text in a given surface format, keeping prompt and response apart.

`render(record, fmt, tokenizer)` returns `Rendered(prompt, response)`; training masks
`prompt` and learns `response`; scoring conditions on `prompt`. For `raw` records the
prompt is empty and the response is the whole text (whole-text loss).

Formats:
  chat      the tokenizer's chat template (SmolLM2: ChatML with its default system turn);
            the response includes the end-of-turn marker so the model learns to stop.
"""

from __future__ import annotations

from dataclasses import dataclass

from .records import Record, to_messages

FORMATS = ("chat",)


@dataclass(frozen=True)
class Rendered:
    prompt: str
    response: str

    @property
    def text(self) -> str:
        return self.prompt + self.response


def chat_split(messages: list[dict[str, str]], tokenizer) -> Rendered:
    """Split a conversation rendered by the chat template into (prompt, last-assistant-turn)."""
    if len(messages) == 1 and messages[0]["role"] == "assistant":
        return Rendered("", messages[0]["content"])
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    if not full.startswith(prompt):
        raise ValueError("chat template does not render the prompt as a prefix of the conversation")
    return Rendered(prompt, full[len(prompt):])


def render(record: Record, fmt: str = "chat", tokenizer=None) -> Rendered:
    if fmt == "chat":
        if tokenizer is None:
            raise ValueError("the chat format needs a tokenizer (its chat template)")
        return chat_split(to_messages(record), tokenizer)
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
