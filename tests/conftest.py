"""Shared fixtures: the tiny random model (fp32, for exact identities) and the real one."""

from __future__ import annotations

import pytest

from loralab import models


@pytest.fixture(scope="session")
def tiny():
    """Seeded 2-layer Llama with the SmolLM2 tokenizer, fp32 on CPU."""
    return models.load("tiny-random", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def smol():
    """The embedded SmolLM2-135M-Instruct under the default device/dtype policy."""
    return models.load("smollm2-135m")
