"""End-to-end smoke tests of the foundation's entry points on the real embedded model."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from loralab.cli import app


@pytest.mark.slow
def test_generate_answers_paris(smol):
    from loralab.generate import generate

    (answer,) = generate(smol, ["What is the capital of France?"], max_new_tokens=24)
    assert "Paris" in answer


@pytest.mark.slow
def test_cli_generate_and_models():
    r = CliRunner().invoke(app, ["generate", "What is the capital of France?", "--max-new-tokens", "24"])
    assert r.exit_code == 0, r.output
    assert "Paris" in r.output
    r = CliRunner().invoke(app, ["models"])
    assert r.exit_code == 0 and "smollm2-135m" in r.output and "tiny-random" in r.output


def test_cli_unknown_model_is_a_clear_error():
    r = CliRunner().invoke(app, ["generate", "hi", "--model", "nope-model"])
    assert r.exit_code == 2
    assert "unknown model spec" in r.output and "tiny-random" in r.output
    assert "Traceback" not in r.output


@pytest.mark.slow
def test_batched_generation_equals_one_at_a_time():
    from loralab import models
    from loralab.generate import generate

    m = models.load("smollm2-135m", device="cpu", dtype="float32")
    prompts = ["Name a fruit.", "What is 2 plus 2? Answer briefly.", "Say hello."]
    batched = generate(m, prompts, max_new_tokens=12, batch_size=2)
    single = [generate(m, [p], max_new_tokens=12)[0] for p in prompts]
    assert batched == single
    assert all(batched)
