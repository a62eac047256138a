"""Render a record as text in a given surface format, keeping prompt and response apart.

`render(record, fmt, tokenizer)` returns `Rendered(prompt, response)`; training masks
`prompt` and learns `response`; scoring conditions on `prompt`. For `raw` records the
prompt is empty and the response is the whole text (whole-text loss), except in the
structured formats (json, yaml) where the wrapper around the text is the prompt.

Formats:
  chat      the tokenizer's chat template (SmolLM2: ChatML with its default system turn);
            the response includes the end-of-turn marker so the model learns to stop.
  alpaca    markdown "### Instruction:" / "### Input:" / "### Response:" sections.
  json      one JSON object {"kind", <prompt fields>, <response field>}; the response is
            the JSON-encoded response value and the closing brace.
  yaml      the same object as a YAML mapping; the response is the response value's
            YAML scalar.
  plain     prose without markup: the prompt's texts separated by blank lines.

json and yaml round-trip losslessly: `parse(prompt + response, fmt)` gives back a
record with the same kind, content fields and therefore the same id (source and meta
are provenance, not surface text, and are not rendered). A chat record is written as
{"kind": "chat", "messages": <all turns but the last>, "reply": <last assistant turn>}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .records import Record, read_records, to_messages

FORMATS = ("chat", "alpaca", "json", "yaml", "plain")
RESPONSE_FIELD = {"raw": "text", "qa": "answer", "instruction": "output", "chat": "reply"}


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


# ---------------------------------------------------------------- alpaca / plain

def _sections(rec: Record) -> tuple[list[tuple[str, str]], str]:
    """(prompt sections as (role, text), response) for the markdown and plain formats."""
    if rec.kind == "raw":
        return [], rec.text
    if rec.kind == "qa":
        secs = [("instruction", rec.question)] + ([("input", rec.context)] if rec.context else [])
        return secs, rec.answer
    if rec.kind == "instruction":
        return [("instruction", rec.instruction)] + ([("input", rec.input)] if rec.input else []), rec.output
    msgs = to_messages(rec)
    last = msgs[-1]["content"] if msgs[-1]["role"] == "assistant" else ""
    body = msgs[:-1] if msgs[-1]["role"] == "assistant" else msgs
    return [({"user": "instruction", "assistant": "response"}.get(m["role"], m["role"]), m["content"]) for m in body], last


def render_alpaca(rec: Record) -> Rendered:
    secs, resp = _sections(rec)
    if not secs:
        return Rendered("", resp)
    head = "".join(f"### {role.capitalize()}:\n{text}\n\n" for role, text in secs)
    return Rendered(head + "### Response:\n", resp)


def render_plain(rec: Record) -> Rendered:
    secs, resp = _sections(rec)
    if not secs:
        return Rendered("", resp)
    return Rendered("".join(f"{text.strip()}\n\n" for _, text in secs), resp)


# ---------------------------------------------------------------- json / yaml

def surface(rec: Record) -> tuple[dict, str, str]:
    """(prompt-side object, response key, response value): the structured view of a record."""
    head = {"kind": rec.kind}
    content = rec.content()
    key = RESPONSE_FIELD[rec.kind]
    if rec.kind == "chat":
        msgs = content["messages"]
        if msgs[-1]["role"] != "assistant":  # a lone user turn: nothing to learn, empty response
            return head | {"messages": msgs}, "", ""
        return head | {"messages": msgs[:-1]}, key, msgs[-1]["content"]
    value = content.pop(key)
    return head | content, key, value


YAML_BREAKS = ("\x85", "\u2028", "\u2029")  # line breaks to YAML, plain characters to Python


def _dump_yaml(obj: dict) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper, value: str):
        # PyYAML writes NEL / LS / PS unescaped and folds them into spaces on reading: quote them
        style = '"' if any(b in value for b in YAML_BREAKS) else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump(obj, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=float("inf"),
                     default_flow_style=False)


def render_structured(rec: Record, fmt: str) -> Rendered:
    head, key, value = surface(rec)
    if fmt == "json":
        full = json.dumps(head | ({key: value} if key else {}), ensure_ascii=False, indent=2)
        if not key:
            return Rendered(full, "")
        tail = json.dumps(value, ensure_ascii=False) + "\n}"
    else:
        full = _dump_yaml(head | ({key: value} if key else {}))
        if not key:
            return Rendered(full, "")
        tail = _dump_yaml({key: value})[len(key) + 1:]  # the value's scalar after "key:"
    if not full.endswith(tail):
        raise ValueError(f"{fmt} rendering does not end with the response value")
    return Rendered(full[: len(full) - len(tail)], tail)


def parse(text: str, fmt: str) -> Record:
    """The record a json/yaml rendering describes (inverse of render for those formats)."""
    if fmt == "json":
        obj = json.loads(text)
    elif fmt == "yaml":
        from ..safeyaml import load

        obj = load(text)
    else:
        raise ValueError(f"parse supports json and yaml, not {fmt!r}")
    if not isinstance(obj, dict) or obj.get("kind") not in RESPONSE_FIELD:
        raise ValueError("not a rendered record: expected a mapping with a known 'kind'")
    obj = dict(obj)
    if obj["kind"] == "chat":
        msgs = list(obj.get("messages") or [])
        if "reply" in obj:
            msgs.append({"role": "assistant", "content": obj.pop("reply")})
        obj["messages"] = msgs
    return Record(**obj)


# ---------------------------------------------------------------- entry points

def render(record: Record, fmt: str = "chat", tokenizer=None) -> Rendered:
    if fmt == "chat":
        if tokenizer is None:
            raise ValueError("the chat format needs a tokenizer (its chat template)")
        return chat_split(to_messages(record), tokenizer)
    if fmt == "alpaca":
        return render_alpaca(record)
    if fmt == "plain":
        return render_plain(record)
    if fmt in ("json", "yaml"):
        return render_structured(record, fmt)
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def render_folder(in_dir: str | Path, fmt: str, out_file: str | Path, tokenizer=None) -> int:
    """Write {id, kind, prompt, response} per record to a JSONL file; returns the count."""
    from ..io import write_jsonl

    if fmt == "chat" and tokenizer is None:
        from ..models import default_tokenizer

        tokenizer = default_tokenizer()

    def rows():
        for rec in read_records(in_dir):
            r = render(rec, fmt, tokenizer)
            yield {"id": rec.id, "kind": rec.kind, "prompt": r.prompt, "response": r.response}

    return write_jsonl(out_file, rows())
