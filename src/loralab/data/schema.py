"""Recognise the common dataset schemas and map a row onto the canonical record fields.

Recognised (first match wins):
  loralab record    {"kind": ..., <kind fields>}               (re-ingesting our own output)
  messages          {"messages": [{"role", "content"}, ...]}    -> chat
  ShareGPT          {"conversations": [{"from", "value"}, ...]} -> chat
  Alpaca            {"instruction", "input"?, "output"}         -> instruction
  prompt/completion {"prompt", "completion"|"response"}         -> instruction
  question/answer   {"question", "answer"|"correct_answer",
                     "context"|"support"|"passage"?}            -> qa
  text              {"text"|"content"|"passage"|"body"}         -> raw
A row that matches none is quarantined as `unknown_schema`; a matching row whose fields
have the wrong type (a number where text belongs, a list of strings as a conversation)
is quarantined as `wrong_type`, never coerced.
"""

from __future__ import annotations

from typing import Any

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "bot": "assistant", "model": "assistant", "chatgpt": "assistant", "system": "system"}
TEXT_KEYS = ("text", "content", "passage", "body")
ANSWER_KEYS = ("answer", "correct_answer")
CONTEXT_KEYS = ("context", "support", "passage")
DOC_KEYS = ("doc", "doc_id", "document_id", "document")


class SchemaError(ValueError):
    """A row that cannot become a record; `reason` is the quarantine code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _str(row: dict, key: str, optional: bool = False) -> str | None:
    v = row.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, str):
        raise SchemaError("wrong_type", f"field {key!r} must be text, found {type(v).__name__}")
    return v


def _messages(turns: Any, role_key: str, text_key: str, roles: dict | None) -> list[dict]:
    if not isinstance(turns, list) or not turns:
        raise SchemaError("wrong_type", f"conversation must be a non-empty list, found {type(turns).__name__}")
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or not isinstance(t.get(role_key), str) or not isinstance(t.get(text_key), str):
            raise SchemaError("wrong_type", f"turn {i} must be an object with text {role_key!r} and {text_key!r}")
        role = roles.get(t[role_key].lower()) if roles else t[role_key]
        if role not in ("system", "user", "assistant"):
            raise SchemaError("wrong_type", f"turn {i} has unknown role {t[role_key]!r}")
        out.append({"role": role, "content": t[text_key]})
    return out


def recognise(row: Any) -> dict[str, Any]:
    """Canonical fields ({"kind": ..., ...}) of one row; raises SchemaError."""
    if isinstance(row, str):
        return {"kind": "raw", "text": row}
    if not isinstance(row, dict):
        raise SchemaError("wrong_type", f"expected an object or a string, found {type(row).__name__}")
    if row.get("kind") in ("raw", "qa", "instruction", "chat"):
        keep = ("kind", "text", "question", "answer", "context", "instruction", "input", "output", "messages")
        return {k: row[k] for k in keep if k in row}
    if "messages" in row:
        return {"kind": "chat", "messages": _messages(row["messages"], "role", "content", None)}
    if "conversations" in row:
        return {"kind": "chat", "messages": _messages(row["conversations"], "from", "value", SHAREGPT_ROLES)}
    if "instruction" in row and "output" in row:
        inp = row.get("input")
        if inp is not None and not isinstance(inp, str):
            raise SchemaError("wrong_type", f"field 'input' must be text, found {type(inp).__name__}")
        return {"kind": "instruction", "instruction": _str(row, "instruction"), "input": inp or None,
                "output": _str(row, "output")}
    if "prompt" in row and ("completion" in row or "response" in row):
        key = "completion" if "completion" in row else "response"
        return {"kind": "instruction", "instruction": _str(row, "prompt"), "output": _str(row, key)}
    if "question" in row and (akey := next((k for k in ANSWER_KEYS if k in row), None)):
        ckey = next((k for k in CONTEXT_KEYS if k in row), "context")
        return {"kind": "qa", "question": _str(row, "question"), "answer": _str(row, akey),
                "context": _str(row, ckey, optional=True) or None}
    for k in TEXT_KEYS:
        if k in row:
            return {"kind": "raw", "text": _str(row, k)}
    raise SchemaError("unknown_schema", f"no known schema matches keys {sorted(row)[:12]}")


def row_doc(row: Any) -> str | None:
    """A document name carried by the row itself (so chunks/turns of one doc stay together)."""
    if isinstance(row, dict):
        for k in DOC_KEYS:
            if isinstance(row.get(k), (str, int)):
                return str(row[k])
        src = row.get("source")
        if isinstance(src, dict) and isinstance(src.get("doc"), (str, int)):
            return str(src["doc"])
    return None


def row_domain(row: Any) -> str | None:
    if isinstance(row, dict) and isinstance(row.get("domain"), str):
        return row["domain"]
    return None


def content_chars(fields: dict) -> int:
    n = 0
    for k, v in fields.items():
        if k == "messages":
            n += sum(len(m["content"]) for m in v)
        elif isinstance(v, str) and k != "kind":
            n += len(v)
    return n
