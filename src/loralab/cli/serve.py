"""`loralab serve`: the OpenAI-compatible server over one base model and a registry of adapters.

    loralab serve --registry adapters/ --port 8000
    loralab serve --model tiny-random --registry adapters/ --api-key secret --max-batch 32
    loralab serve --backend http://127.0.0.1:8001 --registry adapters/   # a remote multi-LoRA server generates
    loralab serve --registry adapters/ --rag nfl=idx/     # requests (or cards) may ask {"rag": {"index": "nfl", "k": 3}}
"""

from __future__ import annotations

import os
from typing import List, Optional

import typer

from .app import app, err, fail, out


@app.command("serve")
def serve_cmd(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Base model spec (see `loralab models`)."),
    registry: Optional[str] = typer.Option(None, "--registry", "-r", help="Folder of adapter folders to serve."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="LORALAB_API_KEY",
                                          help="Require `Authorization: Bearer KEY` on /v1 (or $LORALAB_API_KEY)."),
    max_batch: int = typer.Option(16, help="Requests decoded together at most."),
    max_queue: int = typer.Option(256, help="Requests waiting at most; more get 429 + Retry-After."),
    max_body_bytes: int = typer.Option(1 << 20, help="Largest request body (413 above)."),
    max_prompt_tokens: int = typer.Option(4096, help="Longest prompt in tokens (400 above)."),
    max_tokens: int = typer.Option(1024, help="Largest max_tokens a request may ask (400 above)."),
    default_max_tokens: int = typer.Option(256, help="max_tokens of chat requests that give none."),
    retry_after: int = typer.Option(1, help="Seconds in the Retry-After header of a 429."),
    backend: Optional[str] = typer.Option(None, help="Send generation to this OpenAI-compatible server "
                                                     "(vLLM --enable-lora, LoRAX, another loralab serve)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]"),
    dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16 (auto: the fastest measured "
                              "here; the server reports it at startup, in /health and /v1/models)"),
    batch_invariant: bool = typer.Option(False, "--batch-invariant", help="Decode every request alone (a batch "
                                         "of one), so a greedy answer never depends on the other requests "
                                         "running; costs all batching throughput. With --dtype float32 for "
                                         "answers equal to transformers + peft."),
    decode: str = typer.Option("auto", help="auto | static | transformers: the static-KV-cache decoder "
                               "(Llama-family models; auto falls back to transformers for others) or the "
                               "transformers forward."),
    prefill_chunk: int = typer.Option(256, help="Prompt tokens prefilled per step (static decoder): running "
                                      "answers wait at most one chunk for a long prompt."),
    log_level: str = typer.Option("warning", help="uvicorn's log level."),
    rag: List[str] = typer.Option([], "--rag", help="NAME=DIR: a retrieval index (`loralab rag index`) that "
                                  "requests and adapter cards may name; repeatable."),
) -> None:
    """Serve the base model and every adapter of a registry behind an OpenAI-compatible API."""
    from ..errors import UserError
    from ..serve.api import Limits, create_app
    from ..serve.engine import Engine
    from ..serve.registry import Registry

    limits = Limits(api_key=api_key or os.environ.get("LORALAB_API_KEY") or None, max_body_bytes=max_body_bytes,
                    max_prompt_tokens=max_prompt_tokens, max_tokens=max_tokens,
                    default_max_tokens=default_max_tokens, retry_after=retry_after, backend=backend)
    try:
        indexes = _open_indexes(rag)
        reg = Registry(registry) if registry else None
        if backend:
            engine = None
        else:
            from .. import models

            loaded = models.load(model, device=device, dtype=dtype)
            engine = Engine(loaded, reg, max_batch=max_batch, max_queue=max_queue,
                            batch_invariant=batch_invariant, decode=decode,
                            prefill_chunk=prefill_chunk).start()
    except (UserError, ValueError, FileNotFoundError, RuntimeError) as e:
        fail(str(e))
        return
    if engine is not None:
        names = engine.adapters()
        out.print(f"serving {engine.base_name} with {len(names)} adapters: {', '.join(names) or '(none)'}")
        pr = engine.precision
        out.print(f"precision: {pr['dtype']} on {pr['device']}; decoder: {pr['decoder']}; "
                  f"batches of up to {pr['max_batch']}"
                  + (" (batch-invariant: every request decoded alone)" if pr["batch_invariant"] else
                     " (in bfloat16 a greedy answer may differ alone and inside a mixed batch: --batch-invariant)"
                     if pr["dtype"] != "float32" else ""))
        for name, why in engine.refused.items():
            err.print(f"refused {name}: {'; '.join(why)}")
        for name, notes in engine.notes.items():
            for n in notes:
                err.print(f"note {name}: {n}")
    else:
        out.print(f"forwarding generation to {backend}")
    out.print(f"listening on http://{host}:{port}/v1")
    import uvicorn

    for name, idx in indexes.items():
        out.print(f"index {name}: {len(idx)} passages ({idx.backend})")
    app_ = create_app(engine, limits, registry=reg, indexes=indexes)
    try:
        uvicorn.run(app_, host=host, port=port, log_level=log_level)
    finally:
        if engine is not None:
            engine.stop()


def _open_indexes(specs: list[str]) -> dict:
    """{name: opened Index} from NAME=DIR flags; a damaged index stops the server before it starts."""
    from ..errors import UserError
    from ..rag import open_index

    out = {}
    for spec in specs:
        name, sep, path = (x.strip() for x in spec.partition("="))
        if not sep or not name or not path:
            raise UserError(f"--rag {spec!r}: expected NAME=DIR")
        if name in out:
            raise UserError(f"--rag: index name {name!r} given twice")
        try:
            out[name] = open_index(path)
        except UserError as e:
            raise UserError(f"--rag {name}: {e}") from None
    return out
