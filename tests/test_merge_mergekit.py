"""Parity with mergekit on full models: the same folders merged by both give the same tensors.

Two perturbed copies of a tiny Llama (the tiny-random architecture with a 1,024-token
vocabulary, so the folders are small) and their base, saved as HF folders; mergekit runs
from a YAML config written here. Linear, SLERP, task arithmetic and TIES are deterministic
and must agree to 1e-5. mergekit's DARE draws its masks from the global torch RNG in its
own execution order, which no other program can reproduce; what is compared for DARE is
the rest of it: given mergekit's own kept positions, loralab's L1 rescaling (`rescale: l1`)
gives mergekit's values.
"""

from __future__ import annotations

import copy

import pytest
import torch
import yaml
from safetensors.torch import load_file

from loralab import models
from loralab.merge import MergeConfig, merge
from loralab.merge import methods as M

mergekit = pytest.importorskip("mergekit", reason="mergekit is not installed (pip install -e '.[bench]')")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("mergekit")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = LlamaForCausalLM(models.tiny_config(vocab_size=1024))
    base.save_pretrained(root / "base")
    for name, seed in (("a", 1), ("b", 2)):
        m = copy.deepcopy(base)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in m.parameters():  # fine-tuning-sized changes, half of them on any one value
                p.add_(torch.randn(p.shape, generator=g) * 0.01 * (torch.rand(p.shape, generator=g) < 0.5))
        m.save_pretrained(root / name)
    return root


def mergekit_merge(root, name: str, config: dict) -> dict[str, torch.Tensor]:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    cfg = MergeConfiguration.model_validate(yaml.safe_load(path.read_text()))
    run_merge(cfg, str(root / f"mk_{name}"), options=MergeOptions(copy_tokenizer=False, quiet=True,
                                                                   write_model_card=False, random_seed=0))
    return load_file(root / f"mk_{name}" / "model.safetensors")


def ours(root, name: str, **kw) -> dict[str, torch.Tensor]:
    merge(MergeConfig(parents=[str(root / "a"), str(root / "b")], out=str(root / f"ll_{name}"), **kw))
    return load_file(root / f"ll_{name}" / "model.safetensors")


def assert_same(x: dict, y: dict) -> None:
    assert x.keys() == y.keys()
    worst = max(float((x[k] - y[k]).abs().max()) for k in x)
    assert worst <= 1e-5, worst


def test_linear_slerp_task_arithmetic_and_ties_match_mergekit(folders):
    r = folders
    a, b, base = str(r / "a"), str(r / "b"), str(r / "base")
    cases = {
        "linear": ({"merge_method": "linear", "models": [{"model": a, "parameters": {"weight": 0.3}},
                                                           {"model": b, "parameters": {"weight": 0.7}}]},
                   dict(method="linear", weights=[0.3, 0.7])),
        "slerp": ({"merge_method": "slerp", "base_model": a, "models": [{"model": a}, {"model": b}],
                   "parameters": {"t": 0.3}}, dict(method="slerp", t=0.3)),
        "task_arithmetic": ({"merge_method": "task_arithmetic", "base_model": base,
                             "models": [{"model": a, "parameters": {"weight": 0.8}},
                                        {"model": b, "parameters": {"weight": 0.5}}]},
                            dict(method="linear", weights=[0.8, 0.5], base=base)),
        "ties": ({"merge_method": "ties", "base_model": base,
                  "models": [{"model": a, "parameters": {"weight": 0.6, "density": 0.4}},
                             {"model": b, "parameters": {"weight": 0.4, "density": 0.4}}]},
                 dict(method="ties", weights=[0.6, 0.4], density=0.4, base=base)),
    }
    for name, (mk, kw) in cases.items():
        theirs = mergekit_merge(r, name, {**mk, "dtype": "float32"})
        mine = ours(r, name, **kw)
        assert_same(mine, theirs)
        # not a vacuous agreement: the merge differs from both parents
        assert any(not torch.equal(mine[k], load_file(r / "a" / "model.safetensors")[k]) for k in mine)


def test_dare_rescaling_matches_mergekit_given_its_mask(folders):
    r = folders
    theirs = mergekit_merge(r, "dare", {"merge_method": "dare_linear", "base_model": str(r / "base"), "dtype": "float32",
                                        "models": [{"model": str(r / "a"), "parameters": {"weight": 1.0,
                                                                                          "density": 0.4}}]})
    base, a = load_file(r / "base" / "model.safetensors"), load_file(r / "a" / "model.safetensors")
    n = 0
    for k, t in theirs.items():
        delta, got = a[k] - base[k], t - base[k]
        if not delta.abs().sum():
            continue
        kept = (got != 0).to(delta.dtype)
        moved = delta != 0
        assert abs(float(kept[moved].mean()) - 0.4) < 0.05 or int(moved.sum()) < 200  # its drop rate
        assert torch.allclose(M.rescaled(delta, kept, 0.4, "l1"), got, atol=1e-6, rtol=1e-5)
        n += 1
    assert n > 5
