"""`loralab chat`: a terminal chat with an adapter, against a running server or in-process.

    loralab chat --adapter sport                              # http://127.0.0.1:8000
    loralab chat --model auto --url http://127.0.0.1:8000     # the server's router picks
    loralab chat --adapter sport --registry adapters/ --local # no server: the engine in-process
"""

from __future__ import annotations

from typing import Optional

import typer

from .app import app, err, fail, out


@app.command("chat")
def chat_cmd(
    adapter: Optional[str] = typer.Option(None, "--adapter", "-a", help="Adapter to talk to (default: the base)."),
    model: Optional[str] = typer.Option(None, "--model", help="'auto' (routed by the server) or a model name."),
    url: str = typer.Option("http://127.0.0.1:8000", help="A running `loralab serve`."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="LORALAB_API_KEY", help="The server's key."),
    local: bool = typer.Option(False, "--local", help="Run the engine in this process instead of a server."),
    base: str = typer.Option("smollm2-135m", "--base", help="Base model spec for --local."),
    registry: Optional[str] = typer.Option(None, "--registry", "-r", help="Adapter registry for --local."),
    system: Optional[str] = typer.Option(None, help="System prompt."),
    max_tokens: int = typer.Option(256, help="Tokens per answer at most."),
    temperature: float = typer.Option(0.7, help="0 = greedy."),
    seed: Optional[int] = typer.Option(None, help="Sampling seed."),
    message: Optional[list[str]] = typer.Option(None, "--message", "-p",
                                                help="Send these turns and exit (no interactive prompt)."),
) -> None:
    """Chat in the terminal with the base, an adapter, or the router's choice ('/reset' clears)."""
    from ..errors import UserError
    from ..serve.client import local_chat, remote_chat

    name = model or adapter or "__base__"
    engine = None
    if local:
        from .. import models
        from ..serve.engine import Engine
        from ..serve.registry import Registry

        try:
            engine = Engine(models.load(base), Registry(registry) if registry else None).start()
        except (UserError, ValueError, FileNotFoundError, RuntimeError) as e:
            fail(str(e))
            return
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    turns = iter(message) if message else None
    err.print(f"chatting with {name} ({'in-process' if local else url}); /reset clears, Ctrl-D quits")
    while True:
        try:
            text = next(turns) if turns is not None else input("> ")
        except (EOFError, StopIteration, KeyboardInterrupt):
            break
        if text.strip() == "/reset":
            history = history[:1] if system else []
            continue
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        kw = dict(max_tokens=max_tokens, temperature=temperature, seed=seed)
        try:
            pieces = local_chat(engine, name, history, **kw) if local else \
                remote_chat(url, name, history, api_key=api_key, **kw)
            answer = ""
            for p in pieces:
                answer += p
                out.print(p, end="", markup=False, highlight=False)
            out.print()
        except UserError as e:
            fail(str(e))
            return
        history.append({"role": "assistant", "content": answer})
