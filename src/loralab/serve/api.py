"""The OpenAI-compatible HTTP API over the engine (or over a remote multi-LoRA server).

    app = create_app(Engine(loaded, Registry("adapters/")).start(), Limits(api_key="k"))
    uvicorn.run(app, host="127.0.0.1", port=8000)

Routes: POST /v1/chat/completions, /v1/completions (SSE when `stream`), GET /v1/models,
POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's bodies), GET /health,
GET /metrics (Prometheus text). `model` is the base's name (or `__base__`), an adapter's
name, or `auto` (the router's choice, returned in `route` and the X-Loralab-Route header).
Retrieval (chat only): a request's `rag` {"index", "k"}, or else the `rag` field of the first
chosen adapter's card, names one of the indexes the server opened (`indexes`, from
`loralab serve --rag NAME=DIR`); the last user message gets its top-k passages in
`rag.format_prompt`'s template after routing (the router sees the question, not the passages),
and the response carries `rag` (index, k, source ids) and an X-Loralab-Sources header.

For other parts of the server (the inspector page mounts itself at /inspect) the app
exposes: `app.state.engine` (Engine: `.loaded`, `.bank`, `.adapters()`, `.submit(...)`,
`.lock`, `.version`), `app.state.registry` (Registry or None), `app.state.limits`, and
`app.state.router()` (the Router for the current registry version, built once; raises
UserError when routing is unavailable).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import UserError
from . import protocol as P
from .engine import Done, Engine, QueueFull, Sampling, Token, UnknownAdapter
from .registry import BASE_NAME, RegistryError


@dataclass
class Limits:
    """Every limit of the server (each one a `loralab serve` flag)."""

    api_key: str | None = None  # required as `Authorization: Bearer KEY` when set
    max_body_bytes: int = 1 << 20  # request bodies larger than this: 413
    max_prompt_tokens: int = 4096  # longer prompts: 400
    max_tokens: int = 1024  # cap on max_tokens per request (larger asked: 400)
    default_max_tokens: int = 256  # chat requests that name no max_tokens
    retry_after: int = 1  # seconds, sent with 429 when the queue is full
    backend: str | None = None  # remote OpenAI-compatible server that does the generating
    backend_timeout: float = 600.0


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}


def _error(status: int, message: str, type_: str, param=None, code=None, headers=None) -> JSONResponse:
    body = P.ErrorResponse(error=P.ErrorBody(message=message, type=type_, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _field(loc) -> str:
    return ".".join(str(x) for x in loc if x != "body") or "body"


class _Metrics:
    def __init__(self):
        self.http = Counter()
        self.last = (time.time(), 0)


def create_app(engine: Engine | None, limits: Limits | None = None, *, registry=None,
               indexes: dict | None = None) -> FastAPI:
    """The FastAPI app over `engine` (None with `limits.backend`: everything goes to the backend)."""
    limits = limits or Limits()
    app = FastAPI(title="loralab", docs_url=None, redoc_url=None)
    app.state.engine, app.state.limits = engine, limits
    app.state.registry = registry if registry is not None else getattr(engine, "registry", None)
    metrics = _Metrics()
    routers: dict[int, Any] = {}

    def router():
        """The Router of the current registry version (built once per version)."""
        if app.state.registry is None:
            raise UserError("routing unavailable: the server has no registry")
        try:
            from .router import Router
        except ImportError as e:
            raise UserError(f"routing unavailable ({e})") from e
        v = engine.version if engine is not None else 0
        if v not in routers:
            routers.clear()
            routers[v] = Router.from_registry(app.state.registry.root, model=getattr(engine, "loaded", None))
        return routers[v]

    app.state.router = router
    client_box: dict[str, Any] = {}

    def backend():
        import httpx

        if "c" not in client_box:
            client_box["c"] = httpx.AsyncClient(base_url=limits.backend.rstrip("/"), timeout=limits.backend_timeout)
        return client_box["c"]

    # ------------------------------------------------------------ errors & middleware
    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return _error(e.status, e.message, e.type, e.param, e.code, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {"loc": ("body",), "msg": "invalid body"}
        if first.get("type") == "json_invalid":
            return _error(400, f"malformed JSON: {first.get('msg')}", "invalid_request_error", "body")
        name = _field(first.get("loc", ()))
        return _error(400, f"{name}: {first.get('msg')}", "invalid_request_error", name)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e: StarletteHTTPException):
        return _error(e.status_code, str(e.detail), "invalid_request_error" if e.status_code < 500 else "server_error")

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        path = request.url.path
        if limits.api_key and path.startswith("/v1"):
            auth = request.headers.get("authorization", "")
            if auth != f"Bearer {limits.api_key}":
                metrics.http[401] += 1
                return _error(401, "missing or wrong API key (Authorization: Bearer KEY)", "authentication_error",
                              code="invalid_api_key")
        if request.method == "POST":
            size = request.headers.get("content-length")
            if size is not None and (not size.isdigit() or int(size) > limits.max_body_bytes):
                metrics.http[413] += 1
                return _error(413, f"request body over {limits.max_body_bytes} bytes", "invalid_request_error")
            body = b""
            async for chunk in request.stream():  # chunked bodies are counted too
                body += chunk
                if len(body) > limits.max_body_bytes:
                    metrics.http[413] += 1
                    return _error(413, f"request body over {limits.max_body_bytes} bytes", "invalid_request_error")
            request._body = body
        try:
            resp = await call_next(request)
        except Exception as e:  # never a bare 500 page: the OpenAI error shape, logged in metrics
            metrics.http[500] += 1
            return _error(500, f"internal error: {e!r}", "server_error")
        metrics.http[resp.status_code] += 1
        return resp

    # ------------------------------------------------------------ helpers
    def resolve(model: str, strength: float, adapters: list[P.AdapterWeight] | None, text: str):
        """([(adapter, weight)], route json or None, prompt text) for a request."""
        if adapters:
            names = [(a.name, a.weight) for a in adapters if a.name != BASE_NAME]
            check(names)
            return names, None, text
        if model == "auto":
            try:
                d = router().route(text)
            except UserError as e:
                raise ApiError(400, str(e), param="model", code="routing_unavailable") from e
            pairs = [(n, w * strength) for n, w in d.adapters]
            check(pairs)
            route = d.to_json() if hasattr(d, "to_json") else {"adapters": d.adapters, "rule": d.rule,
                                                               "confidence": d.confidence, "reason": d.reason}
            route["header"] = d.header() if hasattr(d, "header") else ""
            return pairs, route, d.text
        if model in (BASE_NAME, base_name()):
            return [], None, text
        check([(model, strength)])
        return [(model, strength)], None, text

    def base_name() -> str:
        return engine.base_name if engine is not None else "base"

    indexes_ = dict(indexes or {})
    app.state.indexes = indexes_

    card_rags: dict[tuple[int, str], Any] = {}

    def card_rag(pairs) -> P.RagOptions | None:
        """The `rag` field of the first chosen adapter's card, when it has one (read once per
        registry version, like the router: no file is opened per request)."""
        reg = app.state.registry
        if not pairs or reg is None:
            return None
        key = (engine.version if engine is not None else 0, pairs[0][0])
        if key not in card_rags:
            if card_rags and next(iter(card_rags))[0] != key[0]:
                card_rags.clear()
            try:
                spec = reg.resolve(pairs[0][0]).card.get("rag")
            except UserError:
                spec = None
            card_rags[key] = spec if isinstance(spec, dict) else None
        spec = card_rags[key]
        if spec is None:
            return None
        try:
            return P.RagOptions.model_validate(spec)
        except ValueError as e:
            raise ApiError(500, f"adapter {pairs[0][0]!r}: card field rag is invalid ({e})", "server_error") from e

    async def retrieve(msgs: list[dict], opts: P.RagOptions | None):
        """(messages, rag json or None): the last user message with its passages."""
        if opts is None or opts.k == 0:
            return msgs, None
        if opts.index not in indexes_:
            have = ", ".join(sorted(indexes_)) or "none (start the server with --rag NAME=DIR)"
            raise ApiError(404, f"unknown index {opts.index!r}; available: {have}", param="rag.index",
                           code="index_not_found")
        from ..rag import augment

        out, sources = await run_in_threadpool(augment, msgs, indexes_[opts.index], opts.k, None, opts.mode)
        return out, {"index": opts.index, "k": opts.k, "mode": opts.mode, "sources": sources}

    def extra_headers(route, rag):
        h = route_headers(route)
        if rag:
            h["X-Loralab-Sources"] = ",".join(rag["sources"])
        return h

    def check(pairs):
        if engine is None:
            return
        have = engine.adapters()
        for n, _ in pairs:
            if n not in have:
                raise ApiError(404, f"unknown model {n!r}; available: {', '.join([base_name()] + have)}",
                               param="model", code="model_not_found")

    def sampling(req, max_tokens: int | None, top: int, prompt_len: int) -> Sampling:
        if prompt_len > limits.max_prompt_tokens:
            raise ApiError(400, f"prompt has {prompt_len} tokens; the limit is {limits.max_prompt_tokens}",
                           param="messages" if isinstance(req, P.ChatCompletionRequest) else "prompt")
        mt = max_tokens or limits.default_max_tokens
        if mt > limits.max_tokens:
            raise ApiError(400, f"max_tokens {mt} is over the limit {limits.max_tokens}", param="max_tokens")
        return Sampling(max_tokens=mt, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                        stop=list(req.stop or []), top_logprobs=top)

    def submit_all(prompt: list[int], pairs, s: Sampling, n: int):
        loop = asyncio.get_running_loop()
        handles = []
        try:
            for i in range(n):
                si = Sampling(**{**s.__dict__, "seed": None if s.seed is None else s.seed + i,
                                 "stop": list(s.stop), "stop_ids": []})
                handles.append(engine.submit(prompt, pairs, si, loop=loop))
        except QueueFull as e:
            for h in handles:
                h.cancel()
            raise ApiError(429, f"server busy: {e}", "rate_limit_error", code="queue_full",
                           headers={"Retry-After": str(limits.retry_after)}) from e
        except UnknownAdapter as e:
            for h in handles:
                h.cancel()
            raise ApiError(404, str(e), param="model", code="model_not_found") from e
        except ValueError as e:
            for h in handles:
                h.cancel()
            raise ApiError(400, str(e), param="max_tokens") from e
        return handles

    async def merged(handles):
        """(choice index, event) from every handle as they come."""
        q: asyncio.Queue = asyncio.Queue()

        async def pump(i, h):
            async for ev in h.aevents():
                await q.put((i, ev))

        tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(handles)]
        left = len(handles)
        try:
            while left:
                i, ev = await q.get()
                if isinstance(ev, Done):
                    left -= 1
                yield i, ev
        finally:
            for t in tasks:
                t.cancel()
            for h in handles:
                h.cancel()

    async def collect(request: Request, handles):
        """Every choice's events; a client that goes away cancels its requests at once."""
        out = [([], None) for _ in handles]
        gone = asyncio.Event()

        async def watch():
            while not gone.is_set():
                if await request.is_disconnected():
                    for h in handles:
                        h.cancel()
                    return
                await asyncio.sleep(0.25)

        w = asyncio.create_task(watch())
        try:
            async for i, ev in merged(handles):
                if isinstance(ev, Done):
                    out[i] = (out[i][0], ev)
                else:
                    out[i][0].append(ev)
        finally:
            gone.set()
            w.cancel()
        for toks, done in out:
            if done is not None and done.finish_reason == "error":
                raise ApiError(500, f"generation failed: {done.error}", "server_error")
        return out

    tok_text_cache: dict[int, str] = {}

    def tok_text(i: int) -> str:
        if i not in tok_text_cache:
            tok_text_cache[i] = engine.tok.decode([i]) if engine is not None else str(i)
        return tok_text_cache[i]

    def chat_logprobs(toks: list[Token]) -> P.ChoiceLogprobs:
        items = []
        for t in toks:
            if t.id < 0:
                continue
            s = tok_text(t.id)
            items.append(P.TokenLogprob(token=s, logprob=t.logprob, bytes=list(s.encode()), top_logprobs=[
                P.TopLogprob(token=tok_text(j), logprob=v, bytes=list(tok_text(j).encode())) for j, v in t.top]))
        return P.ChoiceLogprobs(content=items)

    def completion_logprobs(toks: list[Token], offset0: int = 0) -> P.CompletionLogprobs:
        lp = P.CompletionLogprobs(top_logprobs=[])
        off = offset0
        for t in toks:
            if t.id < 0:
                continue
            s = tok_text(t.id)
            lp.tokens.append(s)
            lp.token_logprobs.append(t.logprob)
            lp.top_logprobs.append({tok_text(j): v for j, v in t.top})
            lp.text_offset.append(off)
            off += len(s)
        return lp

    def usage(dones) -> P.Usage:
        pt = dones[0].prompt_tokens if dones else 0
        ct = sum(d.completion_tokens for d in dones)
        return P.Usage(prompt_tokens=pt, completion_tokens=ct, total_tokens=pt + ct)

    def route_headers(route):
        return {"X-Loralab-Route": route["header"]} if route else {}

    async def forward(path: str, body: dict, stream: bool, route, rag=None):
        """Send the request to the remote backend and pass its answer through."""
        c = backend()
        headers = {"Authorization": f"Bearer {limits.api_key}"} if limits.api_key else {}
        if stream:
            req = c.build_request("POST", path, json=body, headers=headers)
            resp = await c.send(req, stream=True)
            if resp.status_code != 200:
                data = await resp.aread()
                await resp.aclose()
                return Response(data, status_code=resp.status_code, media_type="application/json")

            async def gen():
                try:
                    async for chunk in resp.aiter_raw():
                        yield chunk
                finally:
                    await resp.aclose()

            return StreamingResponse(gen(), media_type="text/event-stream", headers=extra_headers(route, rag))
        resp = await c.post(path, json=body, headers=headers)
        data = resp.json() if resp.headers.get("content-type", "").startswith("application/json") else None
        if data is None:
            raise ApiError(502, f"backend answered {resp.status_code} without JSON", "server_error")
        if route and resp.status_code == 200:
            data["route"] = route
        if rag and resp.status_code == 200:
            data["rag"] = rag
        return JSONResponse(data, status_code=resp.status_code, headers=extra_headers(route, rag))

    def sse(obj: P.BaseModel | str) -> str:
        return f"data: {obj if isinstance(obj, str) else obj.model_dump_json(exclude_none=True)}\n\n"

    # ------------------------------------------------------------ routes
    @app.post("/v1/chat/completions")
    async def chat(req: P.ChatCompletionRequest, request: Request):
        msgs = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        last_user = next((i for i in range(len(msgs) - 1, -1, -1) if msgs[i]["role"] == "user"), None)
        text = msgs[last_user]["content"] if last_user is not None else ""
        pairs, route, routed = resolve(req.model, req.strength, req.adapters, text)
        if last_user is not None:
            msgs[last_user]["content"] = routed
        msgs, rag = await retrieve(msgs, req.rag or card_rag(pairs))
        if limits.backend:
            body = req.model_dump(exclude_none=True, exclude={"adapters", "strength"})
            if len(pairs) > 1:
                raise ApiError(400, "a remote backend serves one adapter per request", param="adapters")
            body["model"] = pairs[0][0] if pairs else (BASE_NAME if req.model in ("auto", BASE_NAME) else req.model)
            if body["model"] == BASE_NAME and req.model in ("auto", BASE_NAME):
                body["model"] = await backend_base()
            body["messages"] = msgs
            body.pop("rag", None)
            return await forward("/v1/chat/completions", body, req.stream, route, rag)
        from ..generate import chat_inputs

        try:
            prompt = chat_inputs(engine.tok, [msgs])[0]
        except Exception as e:  # a template that refuses the roles' order
            raise ApiError(400, f"messages: {e}", param="messages") from e
        top = (req.top_logprobs or 0) if req.logprobs else 0
        s = sampling(req, req.max_completion_tokens or req.max_tokens, top, len(prompt))
        handles = submit_all(prompt, pairs, s, req.n)
        rid, created, name = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), req.model
        if not req.stream:
            res = await collect(request, handles)
            choices = [P.ChatChoice(index=i, message=P.AssistantMessage(content=d.text),
                                    logprobs=chat_logprobs(toks) if req.logprobs else None,
                                    finish_reason=d.finish_reason)
                       for i, (toks, d) in enumerate(res)]
            body = P.ChatCompletion(id=rid, created=created, model=name, choices=choices,
                                    usage=usage([d for _, d in res]), route=route, rag=rag)
            return JSONResponse(body.model_dump(exclude_none=True), headers=extra_headers(route, rag))

        async def gen():
            for i in range(req.n):
                yield sse(P.ChatCompletionChunk(id=rid, created=created, model=name, route=route, rag=rag, choices=[
                    P.ChunkChoice(index=i, delta=P.Delta(role="assistant", content=""))]))
            dones = []
            async for i, ev in merged(handles):
                if isinstance(ev, Token):
                    lp = chat_logprobs([ev]) if req.logprobs and ev.id >= 0 else None
                    if ev.text or lp:
                        yield sse(P.ChatCompletionChunk(id=rid, created=created, model=name, choices=[
                            P.ChunkChoice(index=i, delta=P.Delta(content=ev.text), logprobs=lp)]))
                else:
                    dones.append(ev)
                    if ev.finish_reason == "error":
                        yield sse(json.dumps({"error": {"message": f"generation failed: {ev.error}",
                                                        "type": "server_error"}}))
                    yield sse(P.ChatCompletionChunk(id=rid, created=created, model=name, choices=[
                        P.ChunkChoice(index=i, delta=P.Delta(), finish_reason=ev.finish_reason)]))
            if req.stream_options and req.stream_options.include_usage:
                yield sse(P.ChatCompletionChunk(id=rid, created=created, model=name, choices=[], usage=usage(dones)))
            yield sse("[DONE]")

        return StreamingResponse(gen(), media_type="text/event-stream", headers=extra_headers(route, rag))

    async def backend_base() -> str:
        data = (await backend().get("/v1/models")).json()
        return next((m["id"] for m in data.get("data", []) if not m.get("parent")), BASE_NAME)

    @app.post("/v1/completions")
    async def completions(req: P.CompletionRequest, request: Request):
        if isinstance(req.prompt, list) and req.prompt and isinstance(req.prompt[0], str):
            if len(req.prompt) != 1:
                raise ApiError(400, "one prompt per request (use n for several answers)", param="prompt")
            req.prompt = req.prompt[0]
        text = req.prompt if isinstance(req.prompt, str) else ""
        pairs, route, routed = resolve(req.model, req.strength, req.adapters, text)
        if limits.backend:
            body = req.model_dump(exclude_none=True, exclude={"adapters", "strength"})
            if len(pairs) > 1:
                raise ApiError(400, "a remote backend serves one adapter per request", param="adapters")
            body["model"] = pairs[0][0] if pairs else await backend_base()
            if isinstance(req.prompt, str):
                body["prompt"] = routed
            return await forward("/v1/completions", body, req.stream, route)
        if isinstance(req.prompt, str):
            prompt = engine.tok.encode(routed, add_special_tokens=False)
            if engine.tok.bos_token_id is not None and (not prompt or prompt[0] != engine.tok.bos_token_id):
                prompt = [engine.tok.bos_token_id] + prompt  # the model's own BOS, as it was trained
        else:
            prompt = list(req.prompt)
            if any(not 0 <= t < len(engine.tok) for t in prompt):
                raise ApiError(400, "prompt: token id out of the vocabulary", param="prompt")
        if not prompt:
            raise ApiError(400, "prompt: empty", param="prompt")
        s = sampling(req, req.max_tokens, req.logprobs or 0, len(prompt))
        handles = submit_all(prompt, pairs, s, req.n)
        rid, created, name = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time()), req.model
        want_lp = req.logprobs is not None
        if not req.stream:
            res = await collect(request, handles)
            choices = [P.CompletionChoice(index=i, text=d.text, finish_reason=d.finish_reason,
                                          logprobs=completion_logprobs(toks) if want_lp else None)
                       for i, (toks, d) in enumerate(res)]
            body = P.Completion(id=rid, created=created, model=name, choices=choices,
                                usage=usage([d for _, d in res]), route=route)
            return JSONResponse(body.model_dump(exclude_none=True), headers=route_headers(route))

        async def gen():
            dones, offsets = [], [0] * req.n
            async for i, ev in merged(handles):
                if isinstance(ev, Token):
                    lp = completion_logprobs([ev], offsets[i]) if want_lp and ev.id >= 0 else None
                    if ev.id >= 0:
                        offsets[i] += len(tok_text(ev.id))
                    if ev.text or lp:
                        yield sse(P.Completion(id=rid, created=created, model=name, choices=[
                            P.CompletionChoice(index=i, text=ev.text, logprobs=lp)]))
                else:
                    dones.append(ev)
                    yield sse(P.Completion(id=rid, created=created, model=name, choices=[
                        P.CompletionChoice(index=i, text="", finish_reason=ev.finish_reason)]))
            if req.stream_options and req.stream_options.include_usage:
                yield sse(P.Completion(id=rid, created=created, model=name, choices=[], usage=usage(dones)))
            yield sse("[DONE]")

        return StreamingResponse(gen(), media_type="text/event-stream", headers=route_headers(route))

    @app.get("/v1/models")
    async def list_models():
        if limits.backend:
            r = await backend().get("/v1/models", headers={"Authorization": f"Bearer {limits.api_key}"}
                                    if limits.api_key else {})
            return JSONResponse(r.json(), status_code=r.status_code)
        now = int(engine.started)
        cards = [P.ModelCard(id=base_name(), created=now, root=engine.loaded.path or base_name(),
                             meta={"precision": engine.precision})]
        for n in engine.adapters():
            info = engine.info.get(n, {})
            cards.append(P.ModelCard(id=n, created=now, root=info.get("path"), parent=base_name(),
                                     meta={k: v for k, v in info.items() if k != "path"}))
        return JSONResponse(P.ModelList(data=cards).model_dump(exclude_none=True))

    @app.post("/v1/load_lora_adapter")
    async def load_lora(req: P.LoadLoraRequest):
        if limits.backend:
            return await forward("/v1/load_lora_adapter", req.model_dump(exclude_none=True), False, None)
        try:
            await run_in_threadpool(engine.load_adapter, req.lora_name, req.lora_path)
        except RegistryError as e:
            raise ApiError(400, str(e), param="lora_path") from e
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora(req: P.UnloadLoraRequest):
        if limits.backend:
            return await forward("/v1/unload_lora_adapter", req.model_dump(exclude_none=True), False, None)
        try:
            await run_in_threadpool(engine.unload_adapter, req.lora_name)
        except UnknownAdapter as e:
            raise ApiError(404, str(e), param="lora_name", code="model_not_found") from e
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' removed successfully.")

    @app.get("/health")
    async def health():
        if engine is None:
            return JSONResponse({"status": "ok", "backend": limits.backend})
        alive = engine._thread is not None and engine._thread.is_alive()
        return JSONResponse({"status": "ok" if alive else "stopped", "adapters": len(engine.adapters()),
                             "queue": engine.queue_depth(), "running": engine.running(),
                             "precision": engine.precision},
                            status_code=200 if alive else 503)

    @app.get("/metrics")
    async def prom():
        lines = []

        def m(name, kind, help_, samples):
            lines.append(f"# HELP loralab_{name} {help_}")
            lines.append(f"# TYPE loralab_{name} {kind}")
            for labels, v in samples:
                lab = "{" + ",".join(f'{k}="{x}"' for k, x in labels.items()) + "}" if labels else ""
                lines.append(f"loralab_{name}{lab} {v}")

        if engine is not None:
            st = engine.stats
            now = time.time()
            t0, c0 = metrics.last
            rate = (st["completion_tokens"] - c0) / max(now - t0, 1e-6)
            metrics.last = (now, st["completion_tokens"])
            m("queue_depth", "gauge", "Requests waiting to join the batch.", [({}, engine.queue_depth())])
            m("running_requests", "gauge", "Requests in the running batch.", [({}, engine.running())])
            m("adapters_resident", "gauge", "Adapters in memory.", [({}, len(engine.adapters()))])
            m("requests_total", "counter", "Generation requests by adapter.",
              [({"adapter": k}, v) for k, v in sorted(engine.per_adapter.items())])
            m("prompt_tokens_total", "counter", "Prompt tokens prefilled.", [({}, st["prompt_tokens"])])
            m("completion_tokens_total", "counter", "Tokens generated.", [({}, st["completion_tokens"])])
            m("tokens_per_second", "gauge", "Tokens generated per second since the previous scrape.",
              [({}, round(rate, 3))])
            m("decode_steps_total", "counter", "Batched decode steps.", [({}, st["steps"])])
            m("engine_errors_total", "counter", "Batches that failed inside the engine.", [({}, st["errors"])])
        m("http_responses_total", "counter", "HTTP responses by status code.",
          [({"code": k}, v) for k, v in sorted(metrics.http.items())])
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    if engine is not None:  # the inspector page (serve/inspect/): its own copy of the base, made on first use
        from .inspect import build_router
        app.include_router(build_router(engine.loaded, registry=getattr(app.state.registry, "root", None),
                                        runs_dir="runs", lazy=True), prefix="/inspect")
    return app
