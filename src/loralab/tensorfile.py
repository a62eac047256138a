"""Safetensors files checked before anything is loaded (adapters from strangers).

A safetensors file is an 8-byte little-endian header length, a JSON header
{name: {dtype, shape, data_offsets}}, then the data. A hostile file can lie: a header
length past the end of the file, offsets outside the data or overlapping, a shape whose
size disagrees with its byte range, a dtype nobody knows. `read_header` reads only the
header and checks all of that; `adapter_problems` then checks an adapter's tensors
against the base model's modules (names, shapes, rank) so that nothing mismatched is
ever handed to PEFT.

    header = read_header(folder / "adapter_model.safetensors")      # TensorFileError if it lies
    problems = adapter_problems(header, base_model, adapter_config)  # [] when it fits the base
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from .errors import UserError

MAX_HEADER_BYTES = 100 * 2**20
ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
            "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
PREFIX = "base_model.model."


class TensorFileError(UserError):
    """A safetensors file that is damaged or lies about its contents."""


def read_header(path: str | Path) -> dict[str, dict[str, Any]]:
    """The checked header {name: {dtype, shape, data_offsets}} (metadata dropped)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise TensorFileError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise TensorFileError(f"{path}: header length {n} runs past the file ({size} bytes)")
            raw = f.read(n)
    except OSError as e:
        raise TensorFileError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise TensorFileError(f"{path}: header is not JSON") from None
    if not isinstance(header, dict):
        raise TensorFileError(f"{path}: header is not a mapping")
    header.pop("__metadata__", None)
    data_size = size - 8 - n
    spans = []
    for name, t in header.items():
        if not isinstance(t, dict) or set(t) != {"dtype", "shape", "data_offsets"}:
            raise TensorFileError(f"{path}: tensor {name!r} has a malformed entry")
        dtype, shape, offs = t["dtype"], t["shape"], t["data_offsets"]
        if dtype not in ITEMSIZE:
            raise TensorFileError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        if (not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)
                or not isinstance(offs, list) or len(offs) != 2 or not all(isinstance(o, int) for o in offs)):
            raise TensorFileError(f"{path}: tensor {name!r} has a malformed shape or offsets")
        start, end = offs
        if not 0 <= start <= end <= data_size:
            raise TensorFileError(f"{path}: tensor {name!r} points outside the file's data "
                                  f"([{start}, {end}) of {data_size} bytes)")
        if math.prod(shape) * ITEMSIZE[dtype] != end - start:
            raise TensorFileError(f"{path}: tensor {name!r} claims shape {shape} {dtype} "
                                  f"but holds {end - start} bytes")
        spans.append((start, end, name))
    spans.sort()
    for (s0, e0, a), (s1, e1, b) in zip(spans, spans[1:]):
        if s1 < e0:
            raise TensorFileError(f"{path}: tensors {a!r} and {b!r} overlap")
    return header


def _module_shapes(model) -> dict[str, tuple[int, int]]:
    """{module name: (in_features, out_features)} of the base's linear and embedding layers."""
    import torch

    out = {}
    for name, m in model.named_modules():
        while hasattr(m, "base_layer"):  # a module PEFT has already wrapped: the layer underneath
            m = m.base_layer
        if isinstance(m, torch.nn.Linear):
            out[name] = (m.in_features, m.out_features)
        elif isinstance(m, torch.nn.Embedding):
            out[name] = (m.num_embeddings, m.embedding_dim)
    return out


def adapter_problems(header: dict[str, dict[str, Any]], model, config: dict[str, Any]) -> list[str]:
    """Every way the adapter's tensors do not fit `model` (a plain, un-wrapped base)."""
    problems: list[str] = []
    shapes = _module_shapes(model)
    names = {n for n, _ in model.named_modules()}
    r = config.get("r")
    rank_pattern = config.get("rank_pattern") or {}
    for name, t in header.items():
        if not name.startswith(PREFIX):
            problems.append(f"tensor {name!r} is not a PEFT adapter tensor")
            continue
        rest = name[len(PREFIX):]
        for part in (".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector.weight", ".lora_magnitude_vector",
                     ".lora_embedding_A", ".lora_embedding_B", ".token_adapter.trainable_tokens_delta"):
            if rest.endswith(part):
                module, kind = rest[: -len(part)], part
                break
        else:  # another PEFT tensor (a bias, modules_to_save, ...): it must belong to a module of the base
            parts = rest.split(".")
            if not any(".".join(parts[:k]) in names for k in range(len(parts) - 1, 0, -1)):
                problems.append(f"tensor {name!r}: the base has no module it could belong to")
            continue
        if module not in shapes:
            problems.append(f"tensor {name!r}: the base has no module {module!r}")
            continue
        fan_in, fan_out = shapes[module]
        shape = t["shape"]
        rank = next((v for k, v in rank_pattern.items() if module.endswith(k)), r)
        want = {".lora_A.weight": [rank, fan_in], ".lora_B.weight": [fan_out, rank],
                ".lora_magnitude_vector.weight": [fan_out], ".lora_magnitude_vector": [fan_out]}.get(kind)
        if want is not None and rank is not None and shape != want:
            problems.append(f"tensor {name!r} has shape {shape}, the base's {module} needs {want}")
        elif kind == ".token_adapter.trainable_tokens_delta" and (len(shape) != 2 or shape[1] not in (fan_in, fan_out)):
            problems.append(f"tensor {name!r} has shape {shape}: rows of the base's width expected")
    return problems
