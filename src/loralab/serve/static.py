"""A static-cache forward for Llama-family models: the serving engine's prefill and decode.

The transformers forward rebuilds masks, position embeddings and cache objects at every step
and runs seven separate projections per layer; at batch 1 on a CPU that Python and
dispatch cost is as large as the weights' own matmuls. Here one object holds:

* the weights as the model has them, q/k/v and gate/up concatenated (four linears per layer
  instead of seven), each pre-packed once for oneDNN on CPU when the model is bf16 (the
  packed product is checked bit-equal to `F.linear` at construction, else plain weights
  are used);
* a KV cache allocated once, (layers, rows, kv heads, capacity, head dim), grown by
  doubling: a request keeps one cache row for its whole life, its token at position p in
  column p, so a decode step writes one column per row and reads a view, never a copy;
* the rotary table for every position, computed by the model's own rotary module;
* the stacked adapters (`AdapterBank`) with q/k/v and gate/up factors fused the same way,
  rebuilt when the bank changes (`AdapterBank.version`).

Every other operation is the transformers Llama code's, in its order and dtypes (RMSNorm in
fp32 then cast, rotary in the model dtype, SDPA with the same GQA handling), so greedy
tokens equal the transformers path's (tested in fp32 and bf16). Supported: llama, mistral
(without a sliding window shorter than the context) and qwen2 (q/k/v biases); anything else
is served by the transformers forward (`supports` says why).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..fastlora import RowAdapters, lora_update

PACK_HINT = 8  # the batch size oneDNN lays the packed weights out for
SUPPORTED = ("llama", "mistral", "qwen2")
GROUPS = (("qkv", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
          ("o", ("self_attn.o_proj",)),
          ("gate_up", ("mlp.gate_proj", "mlp.up_proj")),
          ("down", ("mlp.down_proj",)))


def supports(model, max_context: int | None = None) -> str | None:
    """None when `StaticDecoder` can run `model`, else the reason it cannot."""
    cfg = getattr(model, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in SUPPORTED:
        return f"model type {kind!r} (static decoding covers {', '.join(SUPPORTED)})"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r}"
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        return f"rope type {rope.get('rope_type', rope.get('type'))!r}"
    window = getattr(cfg, "sliding_window", None)
    if window and getattr(cfg, "use_sliding_window", True) and window < (max_context or cfg.max_position_embeddings):
        return f"sliding-window attention ({window} tokens)"
    if getattr(cfg, "mlp_bias", False) or getattr(cfg, "pretraining_tp", 1) != 1:
        return "MLP biases or tensor-parallel slicing"
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not hasattr(inner, "rotary_emb"):
        return "not a plain decoder stack"
    for layer in layers:
        for _, names in GROUPS:
            for n in names:
                mod = layer.get_submodule(n)
                if type(mod) is not torch.nn.Linear:
                    return f"{n} is a {type(mod).__name__}, not a plain linear layer"
    if getattr(model.config, "_attn_implementation", "sdpa") not in ("sdpa", "eager", None):
        return f"attention implementation {model.config._attn_implementation!r}"
    return None


class _Linear:
    """One weight (optionally pre-packed for oneDNN) applied as `F.linear` would. A packed weight
    keeps only its packed copy (the plain one, a concatenation made for it, is dropped)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, pack: bool):
        self.weight, self.bias, self.packed = weight, bias, None
        self.out_features = weight.shape[0]
        if pack:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_HINT)
            self.weight = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


def _can_pack(dtype: torch.dtype, device: torch.device) -> bool:
    """oneDNN packing on CPU for bf16, kept only if it gives F.linear's exact numbers here."""
    if device.type != "cpu" or dtype != torch.bfloat16 or not torch.backends.mkldnn.is_available():
        return False
    try:
        g = torch.Generator().manual_seed(0)
        w = torch.randn(96, 64, generator=g).to(dtype)
        lin = _Linear(w, None, True)
        for n in (1, 3):
            x = torch.randn(n, 2, 64, generator=g).to(dtype)
            if not torch.equal(lin(x), F.linear(x, w)):  # w: the plain weight, kept here by the caller
                return False
        return True
    except (RuntimeError, AttributeError):  # no mkldnn op in this build
        return False


def _cat(mods, attr):
    parts = [getattr(m, attr) for m in mods]
    if attr == "bias":
        if all(p is None for p in parts):
            return None
        parts = [p if p is not None else torch.zeros(m.out_features, dtype=m.weight.dtype, device=m.weight.device)
                 for p, m in zip(parts, mods)]
    return parts[0].detach() if len(parts) == 1 else torch.cat([p.detach() for p in parts], 0)


class StaticDecoder:
    """Prefill chunks and decode steps over a static KV cache of `max_batch` rows.

    Rows are the caller's: `forward(ids, rows, start)` runs tokens `ids` (N, T) for cache rows
    `rows` (a contiguous range or a list), each row's first token at position `start`
    (an int shared by all, for prefill chunks, or an (N,) tensor, for one decode step), and
    returns fp32 logits at the positions asked. `move` copies rows (the caller keeps its
    running rows contiguous)."""

    def __init__(self, model, bank=None, *, max_batch: int = 16, max_context: int = 2048, capacity: int = 256):
        why = supports(model, max_context)
        if why:
            raise ValueError(f"static decoding does not support this model: {why}")
        cfg, inner = model.config, model.model
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.bank, self._fused_version, self._fused = bank, None, {}
        self.max_batch, self.max_context = max_batch, max_context
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.groups = self.heads // self.kv_heads
        self.scaling = inner.layers[0].self_attn.scaling
        self.eps = inner.norm.variance_epsilon
        pack = _can_pack(self.dtype, self.device)
        self.packed = pack
        self.embed = inner.embed_tokens.weight
        self.layers = []
        for i, layer in enumerate(inner.layers):
            lin = {}
            for key, names in GROUPS:
                mods = [layer.get_submodule(n) for n in names]
                lin[key] = _Linear(_cat(mods, "weight"), _cat(mods, "bias"), pack)
            self.layers.append((layer.input_layernorm.weight, layer.post_attention_layernorm.weight, lin,
                                layer.mlp.act_fn, f"model.layers.{i}."))
        self.q_out = self.heads * self.head_dim
        self.kv_out = self.kv_heads * self.head_dim
        self.final_norm = inner.norm.weight
        head = model.get_output_embeddings()
        self.head = _Linear(head.weight.detach(), None, pack)
        with torch.inference_mode():  # the model's own rotary module: one table for every position
            pos = torch.arange(max_context, device=self.device)[None]
            cos, sin = inner.rotary_emb(torch.zeros(1, dtype=self.dtype, device=self.device), position_ids=pos)
        half = self.head_dim // 2
        # rotate_half(x) * sin == roll(x, half) * [-sin_1, sin_2] exactly (a sign flip is exact):
        # one roll instead of two slices, a negation and a cat
        self.cos, self.sin = cos[0], torch.cat((-sin[0, :, :half], sin[0, :, half:]), -1)
        self.capacity = 0
        self.K = self.V = None
        self._grow(min(capacity, max_context))

    # ------------------------------------------------------------------ cache
    def _grow(self, need: int) -> None:
        """Make room for `need` positions per row (doubling, at most max_context)."""
        if need <= self.capacity:
            return
        if need > self.max_context:
            raise ValueError(f"{need} positions exceed the context of {self.max_context}")
        cap = max(need, min(self.max_context, max(64, 2 * self.capacity)))
        shape = (len(self.layers), self.max_batch, self.kv_heads, cap, self.head_dim)
        K = torch.zeros(shape, dtype=self.dtype, device=self.device)
        V = torch.zeros(shape, dtype=self.dtype, device=self.device)
        if self.K is not None:
            K[:, :, :, : self.capacity] = self.K
            V[:, :, :, : self.capacity] = self.V
        self.K, self.V, self.capacity = K, V, cap

    def move(self, src: list[int], dst: list[int], length: int) -> None:
        """Copy the first `length` cache columns of rows `src` into rows `dst`."""
        if src == dst or not src:
            return
        s = torch.tensor(src, device=self.device)
        d = torch.tensor(dst, device=self.device)
        self.K[:, d, :, :length] = self.K[:, s, :, :length]
        self.V[:, d, :, :length] = self.V[:, s, :, :length]

    @property
    def cache_bytes(self) -> int:
        return 0 if self.K is None else 2 * self.K.numel() * self.K.element_size()

    # ------------------------------------------------------------------ adapters
    def _fused_stacks(self) -> dict:
        """{layer prefix + group: (A (S, g r, in), Bt (S, g r, out))} of the bank's stacks, fused
        as the weights are (block-diagonal Bt: each projection's columns see only its own A)."""
        bank = self.bank
        if bank is None or not bank.stacks:
            return {}
        if self._fused_version == bank.version:
            return self._fused
        fused = {}
        for *_, prefix in self.layers:
            for key, names in GROUPS:
                stacks = [bank.stacks.get(prefix + n) for n in names]
                if all(s is None for s in stacks):
                    continue
                ref = next(s for s in stacks if s is not None)
                S, r, din = ref[0].shape
                outs = [self._out(n) for n in names]
                A = torch.zeros((S, r * len(names), din), dtype=ref[0].dtype, device=self.device)
                Bt = torch.zeros((S, r * len(names), sum(outs)), dtype=ref[0].dtype, device=self.device)
                col = 0
                for j, (s, o) in enumerate(zip(stacks, outs)):
                    if s is not None:
                        A[:, j * r:(j + 1) * r] = s[0]
                        Bt[:, j * r:(j + 1) * r, col:col + o] = s[1]
                    col += o
                fused[prefix + key] = (A, Bt)
        self._fused, self._fused_version = fused, bank.version
        return fused

    def _out(self, name: str) -> int:
        if name.endswith(("k_proj", "v_proj")):
            return self.kv_out
        if name.endswith("q_proj"):
            return self.q_out
        if name.endswith(("gate_proj", "up_proj")):
            return self.layers[0][2]["gate_up"].out_features // 2
        return self.layers[0][2]["down"].out_features

    def adapter_rows(self, rows: list[list[tuple[int, float]]], keep: bool = False) -> dict[int, RowAdapters] | None:
        """Per fused width (1, 2, 3 ranks) the RowAdapters of a batch whose rows use [(slot, strength)];
        with `keep`, rows that gather their own factors keep them for the next calls (running rows
        decode step after step with the same adapters: the gather is paid once per batch change)."""
        bank = self.bank
        if bank is None or not bank.stacks or not any(rows):
            return None
        # a fused group of g projections has g times the rank and its B is block-diagonal: the dense
        # all-slots matmul reads every slot's zeros, so beyond a few slots each row gathers its own
        # factors, once per batch change (SmolLM2, 8 adapters, 2-core EPYC, a decode step: 8 rows
        # 37 ms kept-gather vs 53 ms dense vs 50 ms gathered per step; 32 rows 86 vs 107 vs 127 ms)
        out = {g: RowAdapters.of(rows, device=self.device, n_slots=bank.capacity, rank=g * bank.rank)
               for g in (1, 2, 3)}
        if keep:
            for ra in out.values():
                ra.gathered = {}
        return out

    # ------------------------------------------------------------------ forward
    def _norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        h = x.to(torch.float32)
        var = h.pow(2).mean(-1, keepdim=True)
        return w * (h * torch.rsqrt(var + self.eps)).to(x.dtype)

    def _proj(self, lin: _Linear, x: torch.Tensor, lora, key: str, width: int) -> torch.Tensor:
        out = lin(x)
        if lora is None:
            return out
        stack = self._fused.get(key)
        if stack is None:
            return out
        d = lora_update(x.to(stack[0].dtype), stack[0], stack[1], lora[width])
        return out if d is None else out + d.to(out.dtype)

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, rows: range | list[int], start, keep: torch.Tensor | None = None,
                lora: dict[int, RowAdapters] | None = None) -> torch.Tensor:
        """fp32 logits (N, V): of position `keep[n]` of each row's tokens (default: the last).

        `start` an int: the rows' tokens sit at positions start .. start + T - 1 (a prefill
        chunk; rows shorter than T carry padding at the end, whose keys are never read by a
        real position). `start` an (N,) tensor with T == 1: one decode step, each row at its
        own position."""
        N, T = ids.shape
        decode = isinstance(start, torch.Tensor)
        if decode and T != 1:
            raise ValueError("a per-row start is for one decode token per row")
        if decode:
            start = start.cpu()  # positions are read on the host once per step, never per layer
        end = int(start.max()) + 1 if decode else start + T
        self._grow(end)
        if lora is not None:
            self._fused_stacks()
        contiguous = isinstance(rows, range) and rows.step == 1
        ridx = None if contiguous else torch.tensor(list(rows), device=self.device)
        if decode:
            pos = start.to(self.device)
            cos, sin = self.cos[pos][:, None, None], self.sin[pos][:, None, None]  # (N, 1, 1, D)
            mask, p0 = None, int(start[0])
            if N > 1 and bool((start != start[0]).any()):
                mask = (torch.arange(end, device=self.device)[None] <= pos[:, None])[:, None, None]  # (N,1,1,end)
            span = end if mask is not None else p0 + 1
            wr = torch.arange(N, device=self.device) if contiguous else ridx
            if contiguous:
                wr = wr + rows.start
        else:
            cos, sin = self.cos[start:end][None, None], self.sin[start:end][None, None]  # (1, 1, T, D)
            mask = None if start == 0 else (torch.arange(end, device=self.device)[None] <=
                                            torch.arange(start, end, device=self.device)[:, None])[None, None]
            span = end
        x = F.embedding(ids.to(self.device), self.embed)
        for l, (w1, w2, lin, act, prefix) in enumerate(self.layers):
            h = self._norm(x, w1)
            qkv = self._proj(lin["qkv"], h, lora, prefix + "qkv", 3)
            qk = qkv[..., : self.q_out + self.kv_out].view(N, T, self.heads + self.kv_heads, self.head_dim)
            qk = qk.transpose(1, 2)  # q and k heads rotated together
            qk = qk * cos + torch.roll(qk, self.head_dim // 2, -1) * sin
            q, k = qk[:, : self.heads], qk[:, self.heads:]
            v = qkv[..., self.q_out + self.kv_out:].view(N, T, self.kv_heads, self.head_dim).transpose(1, 2)
            Kl, Vl = self.K[l], self.V[l]
            if decode and N == 1 and contiguous:
                Kl[rows.start, :, p0] = k[0, :, 0]
                Vl[rows.start, :, p0] = v[0, :, 0]
            elif decode:
                Kl[wr, :, pos] = k[:, :, 0]
                Vl[wr, :, pos] = v[:, :, 0]
            elif contiguous:
                Kl[rows.start: rows.stop, :, start:end] = k
                Vl[rows.start: rows.stop, :, start:end] = v
            else:
                Kl[ridx, :, start:end] = k
                Vl[ridx, :, start:end] = v
            if contiguous:
                keys, vals = Kl[rows.start: rows.stop, :, :span], Vl[rows.start: rows.stop, :, :span]
            else:
                keys, vals = Kl[ridx, :, :span], Vl[ridx, :, :span]
            a = self._attend(q, keys, vals, mask, causal=not decode and start == 0)
            x = x + self._proj(lin["o"], a, lora, prefix + "o", 1)
            h = self._norm(x, w2)
            gu = self._proj(lin["gate_up"], h, lora, prefix + "gate_up", 2)
            half = gu.shape[-1] // 2
            x = x + self._proj(lin["down"], act(gu[..., :half]) * gu[..., half:], lora, prefix + "down", 1)
        if keep is None:
            last = x[:, -1:]
        else:
            last = x[torch.arange(N, device=self.device), keep.to(self.device)][:, None]
        return self.head(self._norm(last.contiguous(), self.final_norm))[:, -1].float()

    def _attend(self, q, keys, vals, mask, causal: bool) -> torch.Tensor:
        """SDPA as transformers' sdpa_attention_forward calls it; (N, T, heads * head_dim)."""
        N, _, T, D = q.shape
        if T == 1 and self.groups > 1 and (mask is not None or N > 1):
            # one query per row: kv heads x groups, no repeated keys (on CPU 3-6x faster than
            # enable_gqa for a batch of rows; transformers takes this path when a mask is given)
            o = F.scaled_dot_product_attention(q.reshape(N, self.kv_heads, self.groups, D), keys, vals,
                                               attn_mask=mask, scale=self.scaling)
        elif mask is None and self.groups > 1:  # transformers' call without a mask (batch 1 decode, prefill)
            o = F.scaled_dot_product_attention(q, keys, vals, scale=self.scaling, is_causal=causal and T > 1,
                                               enable_gqa=True)
        else:
            if self.groups > 1:
                keys = keys.repeat_interleave(self.groups, dim=1)
                vals = vals.repeat_interleave(self.groups, dim=1)
            o = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask, scale=self.scaling,
                                               is_causal=causal and mask is None and T > 1)
        return o.reshape(N, -1, T, D).transpose(1, 2).reshape(N, T, -1)
