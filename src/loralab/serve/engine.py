"""The serving engine: one base model, many resident adapters, continuous batching.

    eng = Engine(models.load("smollm2-135m"), registry=Registry("adapters/"))
    eng.start()
    h = eng.submit(prompt_ids, adapters=[("sport", 1.0)], params=Sampling(max_tokens=32))
    for ev in h.events(): ...           # Token(...) events, then one Done(...)

One thread owns the model. Between decode steps it admits queued requests and drops
finished or cancelled ones, so requests join and leave without waiting for each other.
For Llama-family models (`static.supports`) the forward is `StaticDecoder`'s: a KV cache
allocated once, one cache row per request for its life, running rows kept contiguous (a
leaving row's place is taken by the last one), admitted prompts prefilled together in chunks
of `prefill_chunk` tokens with one decode step of the running rows between chunks, so a long
prompt stalls running answers by at most one chunk. Other models (or `decode="transformers"`)
use the transformers forward: prompts prefilled together, left-padded, their caches joined to
the running batch and cut out when they leave. Every row of a batch names its own adapters and strengths:
the stacked-adapter forward (fastlora.stacked_lora) applies each row's LoRA in every layer,
so a batch mixing the base and any number of adapters costs one forward. Sampling is per
request (temperature, top_p, seed, stop, max_tokens); log-probs are those of the model's
own distribution (fp32 log-softmax of the logits, before temperature), as the log-prob
engine computes them.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Iterator

import torch

from ..fastlora import stacked_lora
from .bank import AdapterBank, Slot, read_lora
from .registry import BASE_NAME, Registry, RegistryError
from .static import StaticDecoder, supports

DECODERS = ("auto", "static", "transformers")


class QueueFull(RuntimeError):
    """More requests waiting than the engine accepts (the API answers 429)."""


class UnknownAdapter(LookupError):
    def __init__(self, name: str, available: list[str]):
        super().__init__(f"unknown adapter {name!r}; available: {', '.join(available) or '(none)'}")
        self.name, self.available = name, available


@dataclass
class Sampling:
    max_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    top_logprobs: int = 0  # most likely tokens reported at each position (0 = none)
    stop_ids: list[int] = field(default_factory=list)  # token ids that end the answer (EOS added)
    ignore_eos: bool = False  # decode max_tokens whatever comes (benchmarks); EOS is then not added


@dataclass
class Token:
    id: int
    text: str  # text released with this token (held back while it may begin a stop string)
    logprob: float
    top: list[tuple[int, float]]  # [(token id, log-prob)], most likely first


@dataclass
class Done:
    finish_reason: str  # stop | length | abort | error
    prompt_tokens: int
    completion_tokens: int
    text: str
    error: str | None = None


class Handle:
    """A submitted request: its events arrive on a queue (thread) or an asyncio queue (loop)."""

    def __init__(self, rid: int, loop: asyncio.AbstractEventLoop | None):
        self.id = rid
        self.loop = loop
        self.cancelled = False
        self._q: queue.Queue | asyncio.Queue = asyncio.Queue() if loop else queue.Queue()

    def _put(self, ev) -> None:
        if self.loop is None:
            self._q.put(ev)
        else:
            try:
                self.loop.call_soon_threadsafe(self._q.put_nowait, ev)
            except RuntimeError:  # the loop is gone: nobody is listening
                self.cancelled = True

    def events(self) -> Iterator[Token | Done]:
        while True:
            ev = self._q.get()
            yield ev
            if isinstance(ev, Done):
                return

    async def aevents(self):
        while True:
            ev = await self._q.get()
            yield ev
            if isinstance(ev, Done):
                return

    def cancel(self) -> None:
        self.cancelled = True


@dataclass(eq=False)
class _Req:
    handle: Handle
    prompt: list[int]
    adapters: list[tuple[str, float]]
    rows: list[tuple[int, float]]  # [(slot, strength)]
    params: Sampling
    gen: torch.Generator | None
    out: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the decoded answer already released
    t0: float = 0.0
    pos: int = 0  # tokens of this request in its static cache row
    first: torch.Tensor | None = None  # logits after its last prompt token (static prefill)


class Engine:
    """Continuous-batching generation over a base model and a bank of adapters."""

    def __init__(self, loaded, registry: Registry | None = None, *, max_batch: int = 16,
                 max_queue: int = 256, max_context: int | None = None, batch_invariant: bool = False,
                 decode: str = "auto", prefill_chunk: int = 256):
        self.loaded = loaded
        self.model, self.tok = loaded.model, loaded.tokenizer
        self.bank = AdapterBank(self.model)
        self.registry = registry
        # batch-invariant: every request runs alone (batch of one), so its tokens never depend on
        # what else is being served; in bf16 a mixed batch's reduction order can flip a near-tie
        self.batch_invariant = batch_invariant
        self.max_batch, self.max_queue = (1 if batch_invariant else max_batch), max_queue
        self.max_context = max_context or getattr(self.model.config, "max_position_embeddings", 2048)
        if decode not in DECODERS:
            raise ValueError(f"decode must be one of {', '.join(DECODERS)}, not {decode!r}")
        if prefill_chunk < 1:
            raise ValueError("prefill_chunk must be at least 1")
        why = supports(self.model, self.max_context)
        if decode == "static" and why:
            raise ValueError(f"static decoding does not support this model: {why}")
        self.static = None if decode == "transformers" or why else StaticDecoder(
            self.model, self.bank, max_batch=self.max_batch, max_context=self.max_context)
        self.decoder_note = "static KV cache" if self.static else f"transformers ({why or 'asked for'})"
        self.prefill_chunk = prefill_chunk
        self._filling: list[_Req] = []  # static path: requests being prefilled, cache rows from _fill_row
        self._fill_row = self._fill_at = 0  # their first cache row; the next prompt position to prefill
        self._lora_key, self._lora = None, None  # the running rows' adapter layout and its RowAdapters
        import inspect

        # transformers renamed past_key_values to cache; use whichever this version's forward takes
        self._cache_kw = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        self.lock = threading.RLock()  # held while the model runs or the bank changes
        self.notes: dict[str, list[str]] = {}
        self.info: dict[str, dict] = {}  # adapter name -> registry entry info
        self._pending: deque[_Req] = deque()
        self._active: list[_Req] = []
        self._cache = None  # DynamicCache of the active rows (left-padded)
        self._mask: torch.Tensor | None = None  # (B, T) 1 = real token
        self._pos: torch.Tensor | None = None  # (B,) next position id of each row
        # slots taken off their name (unloaded, or reloaded from other weights) that a queued or
        # running row may still use: their weights stay until no row holds the index (_reap)
        self._retired: list[Slot] = []
        self._wake = threading.Condition()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._stop = False
        self.version = 0  # bumps at every load/unload (routers rebuild on it)
        self.stats = Counter()  # requests, prompt_tokens, completion_tokens, steps, errors
        self.per_adapter = Counter()
        self.started = time.time()
        if registry is not None:
            ok, self.refused = registry.scan()
            for name, entry in ok.items():
                try:
                    self.load_adapter(name, str(entry.folder))
                except RegistryError as e:
                    self.refused[name] = [str(e)]
        else:
            self.refused = {}

    # ------------------------------------------------------------------ adapters
    @property
    def precision(self) -> dict:
        """What every number the server returns was computed in (reported at startup, /health, /v1/models)."""
        return {"dtype": str(self.bank.model_dtype).removeprefix("torch."),
                "adapter_dtype": str(self.bank.dtype).removeprefix("torch."),
                "device": str(self.bank.device),
                "batch_invariant": self.batch_invariant, "max_batch": self.max_batch,
                "decoder": self.decoder_note}

    @property
    def base_name(self) -> str:
        return self.loaded.spec

    def adapters(self) -> list[str]:
        return sorted(self.bank.slots)

    def load_adapter(self, name: str, path: str | None = None) -> None:
        """Read an adapter from the registry (inside it only) and make it resident. Loading over
        a resident name puts the new weights in a new slot: requests already admitted finish on
        the weights they started with, later ones get the new ones."""
        if self.registry is None:
            raise RegistryError("no registry folder: the server was started without --registry")
        entry = self.registry.resolve(name, path)
        layers, rank, notes = read_lora(entry.folder, self.model)
        with self.lock, self._wake:
            if name in self.bank.slots:
                self._retired.append(self.bank.detach(name))
            self.bank.add(name, layers, rank, notes)
            self.notes[name] = notes
            self.info[name] = entry.info()
            self.version += 1
            self._reap()

    def unload_adapter(self, name: str) -> None:
        """No new request gets `name`; its slot is freed once no admitted row uses it."""
        with self.lock, self._wake:
            if name not in self.bank.slots:
                raise UnknownAdapter(name, self.adapters())
            self._retired.append(self.bank.detach(name))
            self.info.pop(name, None)
            self.notes.pop(name, None)
            self.version += 1
            self._reap()

    def _reap(self) -> None:
        """Free the retired slots no queued or running row holds (called with the lock held)."""
        with self._wake:
            used = {i for r in list(self._active) + self._filling + list(self._pending) for i, _ in r.rows}
            keep = []
            for slot in self._retired:
                if slot.index in used:
                    keep.append(slot)
                else:
                    self.bank.free(slot)
            self._retired = keep

    # ------------------------------------------------------------------ requests
    def queue_depth(self) -> int:
        return len(self._pending)

    def running(self) -> int:
        return len(self._active) + len(self._filling)

    def submit(self, prompt: list[int], adapters: list[tuple[str, float]] | None = None,
               params: Sampling | None = None, loop: asyncio.AbstractEventLoop | None = None) -> Handle:
        """Queue a request; raises UnknownAdapter, QueueFull or ValueError (too long)."""
        params = params or Sampling()
        adapters = [(n, float(w)) for n, w in (adapters or []) if n != BASE_NAME]
        with self._wake:  # never wait for a running step here (event loops call this)
            self._rows(adapters)  # an unknown adapter fails before the other checks
        if len(self._pending) >= self.max_queue:
            raise QueueFull(f"{len(self._pending)} requests already queued (limit {self.max_queue})")
        if not prompt:
            raise ValueError("empty prompt")
        if len(prompt) + params.max_tokens > self.max_context:
            raise ValueError(f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) exceeds the "
                             f"model's {self.max_context}-token context")
        h = Handle(next(self._ids), loop)
        gen = None
        if params.temperature > 0:
            gen = torch.Generator(device="cpu")
            gen.manual_seed(params.seed if params.seed is not None else int.from_bytes(torch.randint(
                0, 2**31 - 1, (1,)).numpy().tobytes()[:4], "little"))
        if (not params.ignore_eos and self.tok.eos_token_id is not None
                and self.tok.eos_token_id not in params.stop_ids):
            params.stop_ids = params.stop_ids + [self.tok.eos_token_id]
        with self._wake:
            rows = self._rows(adapters)  # resolved and queued under one lock: no reload frees the slot between
            req = _Req(handle=h, prompt=list(prompt), adapters=adapters, rows=rows, params=params, gen=gen,
                       t0=time.time())
            self._pending.append(req)
            self.stats["requests"] += 1
            for n, _ in adapters or [(BASE_NAME, 1.0)]:
                self.per_adapter[n] += 1
            self._wake.notify()
        return h

    def _rows(self, adapters: list[tuple[str, float]]) -> list[tuple[int, float]]:
        """(slot, strength) of each named adapter with a nonzero strength; UnknownAdapter for a name
        that is not resident (call with `_wake` held)."""
        for n, _ in adapters:
            if n not in self.bank.slots:
                raise UnknownAdapter(n, self.adapters())
        return [(self.bank.slots[n].index, w) for n, w in adapters if w != 0.0]

    def generate(self, prompt: list[int], adapters=None, params: Sampling | None = None) -> tuple[list[Token], Done]:
        """Blocking convenience: every token event and the final Done of one request."""
        h = self.submit(prompt, adapters, params)
        if self._thread is None:
            while not self._step_once():
                pass
        toks, done = [], None
        for ev in h.events():
            if isinstance(ev, Token):
                toks.append(ev)
            else:
                done = ev
        return toks, done

    # ------------------------------------------------------------------ loop
    def start(self) -> "Engine":
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._loop, name="loralab-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop = True
        with self._wake:
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop:
            with self._wake:
                while not self._stop and not self._pending and not self._active:
                    self._wake.wait(0.5)
            if self._stop:
                break
            try:
                self._step_once()
            except Exception as e:  # an internal failure ends the batch's requests, not the server
                self.stats["errors"] += 1
                for r in self._active + self._filling + list(self._pending):
                    r.handle._put(Done("error", len(r.prompt), len(r.out), self._text(r), error=repr(e)))
                self._active, self._filling, self._cache = [], [], None
                self._pending.clear()

    def _step_once(self) -> bool:
        """Admit, prefill or decode once, release finished rows; True when nothing is left."""
        if self.static is not None:
            return self._static_step()
        with self.lock:
            new = self._admit(self.max_batch - len(self._active))
            if new:
                self._prefill(new)
            elif self._active:
                self._decode()
            self._reap()
            return not self._active and not self._pending

    @torch.inference_mode()
    def _forward(self, ids, mask, pos, cache, reqs) -> torch.Tensor:
        """(B, V) fp32 logits of each row's last position; `cache` is extended in place."""
        self.bank.rows = self.bank.rows_for([r.rows for r in reqs])
        try:
            with stacked_lora(self.model, self.bank):
                out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                                 logits_to_keep=1, **{self._cache_kw: cache})
        finally:
            self.bank.rows = None
        return out.logits[:, -1].float()

    def _prefill(self, new: list[_Req]) -> None:
        from transformers import DynamicCache

        dev = self.bank.device
        T = max(len(r.prompt) for r in new)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        ids = torch.full((len(new), T), pad, dtype=torch.long)
        mask = torch.zeros((len(new), T), dtype=torch.long)
        for i, r in enumerate(new):  # left padding: every row ends at its last prompt token
            ids[i, T - len(r.prompt):] = torch.tensor(r.prompt)
            mask[i, T - len(r.prompt):] = 1
        pos = (mask.cumsum(1) - 1).clamp_min(0)
        cache = DynamicCache()
        logits = self._forward(ids.to(dev), mask.to(dev), pos.to(dev), cache, new)
        self.stats["prompt_tokens"] += sum(len(r.prompt) for r in new)
        self._join(new, cache, mask.to(dev), torch.tensor([len(r.prompt) for r in new], device=dev))
        self._emit(new, logits)

    def _decode(self) -> None:
        reqs = self._active
        dev = self.bank.device
        ids = torch.tensor([[r.out[-1]] for r in reqs], device=dev)
        self._mask = torch.cat([self._mask, torch.ones((len(reqs), 1), dtype=self._mask.dtype, device=dev)], 1)
        logits = self._forward(ids, self._mask, self._pos[:, None], self._cache, reqs)
        self._pos = self._pos + 1
        self.stats["steps"] += 1
        self._emit(reqs, logits)

    # ------------------------------------------------------------------ static path
    def _admit(self, room: int) -> list[_Req]:
        """Release cancelled running rows and queued requests, then take up to `room` queued ones."""
        self._drop([r for r in self._active if r.handle.cancelled], "abort")
        while self._pending and self._pending[0].handle.cancelled:
            r = self._pending.popleft()
            r.handle._put(Done("abort", len(r.prompt), 0, ""))
        new = []
        with self._wake:
            while self._pending and len(new) < room:
                r = self._pending.popleft()
                if not r.handle.cancelled:
                    new.append(r)
        return new

    def _static_step(self) -> bool:
        """Admit a group when none is filling, prefill one chunk of it, decode the running rows once."""
        with self.lock:
            if not self._filling:
                self._filling = self._admit(self.max_batch - len(self._active))
                self._fill_row, self._fill_at = len(self._active), 0
            else:
                self._admit(0)  # cancellations only: the filling group completes first
            running = bool(self._active)
            if self._filling:
                self._prefill_chunk()
            if running:
                self._static_decode()
            self._reap()
            return not self._active and not self._filling and not self._pending

    def _prefill_chunk(self) -> None:
        """One chunk of the filling group's prompts (right-padded to the longest); when the last
        chunk is done the group joins the running rows and gets its first tokens."""
        g, c0 = self._filling, self._fill_at
        T = max(len(r.prompt) for r in g)
        c1 = min(T, c0 + self.prefill_chunk)
        ids = torch.zeros((len(g), c1 - c0), dtype=torch.long)
        for i, r in enumerate(g):
            part = r.prompt[c0:c1]
            if part:
                ids[i, : len(part)] = torch.tensor(part)
        keep = torch.tensor([min(max(len(r.prompt) - 1 - c0, 0), c1 - c0 - 1) for r in g])
        rows = range(self._fill_row, self._fill_row + len(g))
        logits = self.static.forward(ids, rows, c0, keep=keep, lora=self.static.adapter_rows([r.rows for r in g]))
        self.stats["prompt_tokens"] += sum(max(0, min(len(r.prompt), c1) - c0) for r in g)
        self.stats["prefill_chunks"] += 1
        for i, r in enumerate(g):
            if c0 <= len(r.prompt) - 1 < c1:
                r.first = logits[i]
        self._fill_at = c1
        if c1 < T:
            return
        n = len(self._active)
        if self._fill_row != n:  # running rows left while the group filled: close the gap
            self.static.move(list(rows), list(range(n, n + len(g))), T)
        for r in g:
            r.pos = len(r.prompt)
        self._active += g
        self._filling = []
        gone = [r for r in g if r.handle.cancelled]
        self._drop(gone, "abort")
        live = [r for r in g if not r.handle.cancelled]
        if live:
            first = torch.stack([r.first for r in live])
            for r in live:
                r.first = None
            self._emit(live, first)

    def _static_decode(self) -> None:
        reqs = self._active
        dev = self.bank.device
        # keyed by the rows' adapters themselves (object ids of finished requests get reused)
        key = (self.bank.version, tuple(tuple(r.rows) for r in reqs))
        if key != self._lora_key:
            self._lora_key, self._lora = key, self.static.adapter_rows([r.rows for r in reqs], keep=True)
        ids = torch.tensor([[r.out[-1]] for r in reqs], device=dev)
        pos = torch.tensor([r.pos for r in reqs])  # host positions: the decoder reads them once
        logits = self.static.forward(ids, range(0, len(reqs)), pos, lora=self._lora)
        for r in reqs:
            r.pos += 1
        self.stats["steps"] += 1
        self._emit(reqs, logits)

    def _static_drop(self, gone_ids: set[int]) -> None:
        """Remove rows from the running ones, the last row moving into each hole (rows stay contiguous)."""
        act = list(self._active)
        for i in sorted((i for i, r in enumerate(act) if id(r) in gone_ids), reverse=True):
            last = len(act) - 1
            if i != last:
                self.static.move([last], [i], act[last].pos)
                act[i] = act[last]
            act.pop()
        self._active = act

    # ------------------------------------------------------------------ cache rows
    def _join(self, new: list[_Req], cache, mask: torch.Tensor, pos: torch.Tensor) -> None:
        """Append prefilled rows to the running batch (both left-padded to one length)."""
        if not self._active:
            self._active, self._cache, self._mask, self._pos = list(new), cache, mask, pos
            return
        T1, T2 = self._mask.shape[1], mask.shape[1]
        T = max(T1, T2)

        def lpad(x: torch.Tensor, n: int) -> torch.Tensor:  # (B, H, t, D) or (B, t): n zero columns in front
            if n == 0:
                return x
            if x.dim() == 2:
                return torch.cat([x.new_zeros((x.shape[0], n)), x], 1)
            return torch.cat([x.new_zeros((x.shape[0], x.shape[1], n, x.shape[3])), x], 2)

        for la, lb in zip(self._cache.layers, cache.layers):
            la.keys = torch.cat([lpad(la.keys, T - T1), lpad(lb.keys, T - T2)], 0)
            la.values = torch.cat([lpad(la.values, T - T1), lpad(lb.values, T - T2)], 0)
        self._mask = torch.cat([lpad(self._mask, T - T1), lpad(mask, T - T2)], 0)
        self._pos = torch.cat([self._pos, pos])
        self._active += new

    def _drop(self, gone: list[_Req], reason: str) -> None:
        """Cut finished rows out of the batch and trim columns that are padding for every row."""
        if not gone:
            return
        for r in gone:
            if reason == "abort":
                r.handle._put(Done("abort", len(r.prompt), len(r.out), self._text(r)))
        gone_ids = {id(r) for r in gone}
        if self.static is not None:
            self._static_drop(gone_ids)
            return
        keep = [i for i, r in enumerate(self._active) if id(r) not in gone_ids]
        self._active = [self._active[i] for i in keep]
        if not keep:
            self._cache = self._mask = self._pos = None
            return
        idx = torch.tensor(keep, device=self._mask.device)
        mask = self._mask.index_select(0, idx)
        first = int((mask.cumsum(1) == 0).sum(1).min())  # leading columns empty in every row
        self._mask = mask[:, first:]
        self._pos = self._pos.index_select(0, idx)
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, idx)[:, :, first:]
            layer.values = layer.values.index_select(0, idx)[:, :, first:]

    # ------------------------------------------------------------------ sampling
    def _text(self, r: _Req) -> str:
        return self.tok.decode(r.out, skip_special_tokens=True)

    def _pick(self, r: _Req, logits: torch.Tensor) -> int:
        p = r.params
        if p.temperature <= 0:
            return int(logits.argmax())
        probs = torch.softmax(logits / p.temperature, dim=-1)
        if p.top_p < 1.0:
            sp, si = probs.sort(descending=True)
            keep = sp.cumsum(0) - sp < p.top_p  # smallest set whose mass reaches top_p (the first always)
            probs = torch.zeros_like(probs).scatter_(0, si[keep], sp[keep])
        return int(torch.multinomial(probs.cpu(), 1, generator=r.gen))

    def _emit(self, reqs: list[_Req], logits: torch.Tensor) -> None:
        """Pick each row's next token, send it, and retire the rows that are done."""
        lsm = torch.log_softmax(logits, dim=-1)  # (B, V) fp32
        k = max((r.params.top_logprobs for r in reqs), default=0)
        if k:
            tv, ti = lsm.topk(k, dim=-1)
            tv, ti = tv.cpu().tolist(), ti.cpu().tolist()
        done: list[_Req] = []
        for b, r in enumerate(reqs):
            tid = self._pick(r, logits[b])
            r.out.append(tid)
            self.stats["completion_tokens"] += 1
            lp = float(lsm[b, tid])
            top = list(zip(ti[b], tv[b]))[: r.params.top_logprobs] if r.params.top_logprobs else []
            if tid in r.params.stop_ids:  # the end token is not part of the answer
                r.out.pop()
                self.stats["completion_tokens"] -= 1
                text = self._text(r)
                if text[r.sent:]:
                    r.handle._put(Token(id=-1, text=text[r.sent:], logprob=0.0, top=[]))
                r.handle._put(Done("stop", len(r.prompt), len(r.out), text))
                done.append(r)
                continue
            finish = None
            text = self._text(r)
            if finish is None and r.params.stop:
                hit = [text.find(s, max(0, r.sent - len(s))) for s in r.params.stop]
                hit = [h for h in hit if h >= 0]
                if hit:
                    text, finish = text[: min(hit)], "stop"
            if finish is None and (len(r.out) >= r.params.max_tokens
                                   or len(r.prompt) + len(r.out) >= self.max_context):
                finish = "length"
            if finish is None:
                hold = max((len(s) - 1 for s in r.params.stop), default=0)
                safe = len(text) - hold
                if text.endswith("\ufffd"):  # an unfinished multi-byte character
                    safe = min(safe, len(text) - 1)
                delta = text[r.sent: max(r.sent, safe)]
            else:
                delta = text[r.sent:]
            r.sent += len(delta)
            r.handle._put(Token(id=tid, text=delta, logprob=lp, top=top))
            if finish is not None:
                r.handle._put(Done(finish, len(r.prompt), len(r.out), text))
                done.append(r)
        self._drop(done, "done")
