"""Chat turns against a running server (SSE over httpx) or an in-process engine.

    for piece in remote_chat("http://127.0.0.1:8000", "sport", messages): print(piece, end="")
    for piece in local_chat(engine, "sport", messages): ...

Both yield the answer's text as it is generated; `model` is an adapter name, the base's
name, or "auto" (remote only: the server routes).
"""

from __future__ import annotations

import json
from typing import Iterator

from ..errors import UserError
from .protocol import ChatCompletionChunk


def remote_chat(url: str, model: str, messages: list[dict], *, api_key: str | None = None,
                max_tokens: int = 256, temperature: float = 0.7, seed: int | None = None,
                timeout: float = 600.0) -> Iterator[str]:
    import httpx

    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature,
            "stream": True, **({"seed": seed} if seed is not None else {})}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.stream("POST", url.rstrip("/") + "/v1/chat/completions", json=body, headers=headers,
                          timeout=timeout) as r:
            if r.status_code != 200:
                r.read()
                try:
                    msg = r.json()["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    msg = r.text[:200]
                raise UserError(f"server answered {r.status_code}: {msg}")
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if "error" in data:
                    raise UserError(f"server error: {data['error'].get('message')}")
                for c in ChatCompletionChunk.model_validate(data).choices:
                    if c.delta.content:
                        yield c.delta.content
    except httpx.HTTPError as e:
        raise UserError(f"cannot reach {url}: {e}") from e


def local_chat(engine, model: str, messages: list[dict], *, max_tokens: int = 256, temperature: float = 0.7,
               seed: int | None = None) -> Iterator[str]:
    from ..generate import chat_inputs
    from .engine import Done, Sampling, UnknownAdapter
    from .registry import BASE_NAME

    if model == "auto":
        raise UserError("--model auto needs a running server (loralab serve) with a registry")
    prompt = chat_inputs(engine.tok, [messages])[0]
    adapters = [] if model in (BASE_NAME, engine.base_name) else [(model, 1.0)]
    try:
        h = engine.submit(prompt, adapters, Sampling(max_tokens=max_tokens, temperature=temperature, seed=seed))
    except UnknownAdapter as e:
        raise UserError(str(e)) from e
    for ev in h.events():
        if isinstance(ev, Done):
            if ev.finish_reason == "error":
                raise UserError(f"generation failed: {ev.error}")
            return
        if ev.text:
            yield ev.text
