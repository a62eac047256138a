"""Merging adapters: exact identities on the tiny model, refusals, plain-PEFT reload, CLI."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from loralab.adapters import save_adapter
from loralab.cli import app
from loralab.merge import MergeConfig, MergeError, merge
from loralab.merge import methods as M
from loralab.merge.folders import read_adapter

IDS = torch.tensor([[1, 450, 2001, 77, 9, 3140, 12, 5]])


def make_adapter(tiny, folder, *, r=4, seed=0, targets=("q_proj", "v_proj", "down_proj"), fingerprint=None,
                 scale=0.1, **lora):
    """A real PEFT adapter on a copy of the tiny model, with seeded random A and B (B is 0 at init)."""
    from peft import LoraConfig, get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = get_peft_model(copy.deepcopy(tiny.model), LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets),
                                                                  **lora))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_" in n or "token_adapter" in n:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    card = {"kind": "adapter", "method": "lora", "domain": f"d{seed}",
            "base": {"spec": tiny.spec, "fingerprint": fingerprint or tiny.fingerprint, "path": tiny.path}}
    save_adapter(m, folder, card=card)
    return folder


def deltas(folder) -> dict[str, torch.Tensor]:
    return {n: f.delta() for n, f in read_adapter(folder).modules.items()}


def weighted_sum(ws, ds) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for w, d in zip(ws, ds):
        for n, t in d.items():
            out[n] = out.get(n, 0) + w * t
    return out


def logits(tiny, *folders, active=None) -> torch.Tensor:
    """Base logits with PEFT-loaded adapters; `active`: several adapters active at once (their sum)."""
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = PeftModel.from_pretrained(copy.deepcopy(tiny.model), str(folders[0]), adapter_name="a0")
        for i, f in enumerate(folders[1:], 1):
            m.load_adapter(str(f), adapter_name=f"a{i}")
    if active:
        m.base_model.set_adapter([f"a{i}" for i in range(len(folders))])
    with torch.no_grad():
        return m(input_ids=IDS).logits


@pytest.fixture(scope="module")
def pair(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    a = make_adapter(tiny, root / "a", r=4, seed=1)
    b = make_adapter(tiny, root / "b", r=8, seed=2, targets=("q_proj", "k_proj"))
    return root, a, b


def close(x: torch.Tensor, y: torch.Tensor, rel: float) -> bool:
    return float((x - y).norm() / y.norm().clamp_min(1e-12)) <= rel


# ------------------------------------------------------------------ identities

@pytest.mark.parametrize("method", ["linear", "cat", "svd", "ties", "dare_linear", "magnitude"])
def test_one_parent_with_weight_one_returns_it(method, tiny, pair, tmp_path):
    root, a, _ = pair
    extra = {"drop": 0.0} if method.startswith("dare") else {}
    card = merge(MergeConfig(parents=[str(a)], method=method, weights=[1.0], out=str(tmp_path / "m"), **extra))
    got, want = deltas(tmp_path / "m"), deltas(a)
    assert got.keys() == want.keys()
    for n in want:
        assert close(got[n], want[n], 1e-5), n
    assert torch.allclose(logits(tiny, tmp_path / "m"), logits(tiny, a), atol=1e-5)
    assert card["merge"]["parents"][0]["path"] == str(a) and card["merge"]["weights"] == [1.0]


@pytest.mark.parametrize("method,tol", [("cat", 1e-6), ("linear", 1e-5)])
def test_linear_and_cat_give_the_weighted_sum_of_deltas(method, tol, pair, tmp_path):
    root, a, b = pair
    ws = [0.7, -0.3]
    card = merge(MergeConfig(parents=[str(a), str(b)], method=method, weights=ws, out=str(tmp_path / "m")))
    got, want = deltas(tmp_path / "m"), weighted_sum(ws, [deltas(a), deltas(b)])
    assert got.keys() == want.keys()  # union of modules: q, k, v, down
    for n in want:
        assert close(got[n], want[n], tol), n
    assert card["merge"]["rank"] == 12  # 4 + 8
    if method == "linear":  # the exact rank of a sum of rank-4 and rank-8 deltas is at most 12
        s = card["merge"]["svd"]
        assert s["max_numeric_rank"] <= 12 and s["max_rel_error"] < 1e-5


def test_svd_truncation_reports_its_exact_rank_and_error(pair, tmp_path):
    root, a, b = pair
    card = merge(MergeConfig(parents=[str(a), str(b)], method="svd", rank=5, out=str(tmp_path / "m")))
    s = card["merge"]["svd"]
    want = weighted_sum([0.5, 0.5], [deltas(a), deltas(b)])
    got = deltas(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "adapter_config.json").read_text())
    assert cfg["r"] == 5 and cfg["lora_alpha"] == 5 and s["rank"] == 5
    for n, d in want.items():
        err = float((got[n] - d).norm() / d.norm())
        assert abs(err - s["modules"][n]["rel_error"]) < 1e-5, n
        assert s["modules"][n]["numeric_rank"] == int(torch.linalg.matrix_rank(d))
    tot = sum(float(d.norm()) ** 2 for d in want.values()) ** 0.5
    errs = sum(float((got[n] - d).norm()) ** 2 for n, d in want.items()) ** 0.5
    assert abs(s["rel_error"] - errs / tot) < 1e-5


def test_rslora_adapters_merge_like_peft_runs_them(tiny, pair, tmp_path):
    """rsLoRA's scale is alpha/sqrt(r): the linear merge of two adapters (weights 1, 1) gives
    the same outputs as PEFT running both, unmerged, at once."""
    root, a, _ = pair
    rs = make_adapter(tiny, tmp_path / "rs", r=16, seed=3, use_rslora=True)
    merge(MergeConfig(parents=[str(rs), str(a)], method="cat", weights=[1, 1], out=str(tmp_path / "m")))
    want = logits(tiny, rs, a, active=True)
    assert not torch.allclose(want, logits(tiny, a), atol=1e-3)  # the rsLoRA part matters
    assert torch.allclose(logits(tiny, tmp_path / "m"), want, atol=1e-5)


def test_full_model_is_base_plus_merged_delta(tiny, pair, tmp_path):
    from loralab import models

    root, a, b = pair
    merge(MergeConfig(parents=[str(a), str(b)], method="linear", weights=[1, 1], full=True, out=str(tmp_path / "m")))
    full = models.load(str(tmp_path / "m" / "full"), device="cpu", dtype="float32")
    with torch.no_grad():
        got = full.model(input_ids=IDS).logits
    assert torch.allclose(got, logits(tiny, a, b, active=True), atol=1e-5)
    card = json.loads((tmp_path / "m" / "full" / "loralab.json").read_text())
    assert card["kind"] == "model" and card["merge"]["truncated"] is False


# ------------------------------------------------------------------ methods on tensors

def test_ties_on_a_hand_example():
    d1 = torch.tensor([3.0, -1.0, 0.5, -4.0])
    d2 = torch.tensor([-2.0, 2.0, 0.1, -1.0])
    p = M.Params(density=0.5)
    # pruning keeps |3|, |-4| of d1 and |-2|, |2| of d2; elected signs by sum: +, +, 0->+, -
    assert torch.equal(M.merge_deltas("ties", [d1, d2], [1, 1], p), torch.tensor([3.0, 2.0, 0.0, -4.0]))
    # by count of signs: position 0 has one + and one - (tie -> +)
    assert torch.equal(M.merge_deltas("ties", [d1, d2], [1, 1], M.Params(density=1.0, sign="count")),
                       torch.tensor([3.0, 2.0, 0.3, -2.5]))


def test_dare_is_seeded_and_rescales():
    d = torch.randn(200, 100)
    p = M.Params(density=0.3, seed=7)
    x = M.merge_deltas("dare_linear", [d], [1.0], p, name="w")
    assert torch.equal(x, M.merge_deltas("dare_linear", [d], [1.0], p, name="w"))
    assert not torch.equal(x, M.merge_deltas("dare_linear", [d], [1.0], M.Params(density=0.3, seed=8), name="w"))
    kept = x != 0
    assert abs(float(kept.float().mean()) - 0.3) < 0.01
    assert torch.allclose(x[kept], d[kept] / 0.3)
    l1 = M.merge_deltas("dare_linear", [d], [1.0], M.Params(density=0.3, seed=7, rescale="l1"), name="w")
    assert torch.equal(l1 != 0, kept) and torch.allclose(l1.abs().sum(), d.abs().sum())


def test_slerp_on_the_circle_and_its_linear_fallback():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert torch.allclose(M.slerp(0.5, a, b), torch.tensor([2 ** -0.5, 2 ** -0.5]))
    assert torch.allclose(M.slerp(0.0, a, b), a) and torch.allclose(M.slerp(1.0, a, b), b, atol=1e-7)
    c = torch.tensor([1.0, 1e-3])  # |cos| > 0.9995: plain interpolation
    assert torch.equal(M.slerp(0.25, a, c), 0.75 * a + 0.25 * c)


# ------------------------------------------------------------------ refusals

def test_dora_and_trigger_token_adapters_are_refused(tiny, tmp_path):
    dora = make_adapter(tiny, tmp_path / "dora", use_dora=True)
    tok = make_adapter(tiny, tmp_path / "tok", trainable_token_indices=[5])
    with pytest.raises(MergeError, match="DoRA"):
        merge(MergeConfig(parents=[str(dora)], out=str(tmp_path / "m")))
    with pytest.raises(MergeError, match="trained token rows"):
        merge(MergeConfig(parents=[str(tok)], out=str(tmp_path / "m")))
    assert not (tmp_path / "m").exists()


def test_different_bases_and_non_finite_results_are_refused(tiny, pair, tmp_path):
    root, a, _ = pair
    other = make_adapter(tiny, tmp_path / "other", fingerprint="0123456789abcdef")
    with pytest.raises(MergeError, match="different base models"):
        merge(MergeConfig(parents=[str(a), str(other)], out=str(tmp_path / "m")))
    bad = make_adapter(tiny, tmp_path / "bad", seed=4)
    w = load_file(bad / "adapter_model.safetensors")
    k = next(k for k in w if "lora_B" in k)
    w[k][0, 0] = float("inf")
    save_file(w, str(bad / "adapter_model.safetensors"))
    with pytest.raises(MergeError, match="non-finite"):
        merge(MergeConfig(parents=[str(a), str(bad)], method="ties", density=0.5, out=str(tmp_path / "m")))
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------ interop and CLI

def test_merged_adapter_reloads_in_plain_peft(tiny, pair, tmp_path):
    root, a, b = pair
    base = tmp_path / "base"
    tiny.model.save_pretrained(base)
    merge(MergeConfig(parents=[str(a), str(b)], method="ties", density=0.6, rank=12, out=str(tmp_path / "m")))
    with torch.no_grad():
        from peft import PeftModel

        want = PeftModel.from_pretrained(copy.deepcopy(tiny.model), str(tmp_path / "m"))(input_ids=IDS).logits
    script = textwrap.dedent(f"""
        import sys, torch
        from transformers import AutoModelForCausalLM
        from peft import PeftModel
        m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({str(base)!r}), {str(tmp_path / 'm')!r})
        with torch.no_grad():
            torch.save(m(input_ids=torch.tensor({IDS.tolist()})).logits, {str(tmp_path / 'l.pt')!r})
        assert "loralab" not in sys.modules
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    got = torch.load(tmp_path / "l.pt")
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, tiny.model(input_ids=IDS).logits, atol=1e-3)


def test_cli_merges_and_bad_input_is_one_line(pair, tmp_path):
    root, a, b = pair
    r = CliRunner().invoke(app, ["merge", str(a), str(b), "--method", "dare_ties", "--drop", "0.4", "--seed", "3",
                                 "--weights", "1,1", "--rank", "6", "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert "merged 2 adapters by dare_ties" in r.output and "relative Frobenius error" in r.output
    card = json.loads((tmp_path / "m" / "loralab.json").read_text())
    assert card["merge"]["params"] == {"density": 0.6, "sign": "sum", "rescale": "inverse", "seed": 3,
                                       "normalize": False}
    assert card["domain"] == "d1+d2" and card["base"]["spec"] == "tiny-random"
    for args, msg in ((["--method", "slerp", str(a), str(b), str(a)], "slerp merges exactly two"),
                      (["--weights", "1", str(a), str(b)], "1 weights for 2 parents"),
                      ([str(a), str(tmp_path / "nope")], "no such folder"),
                      ([str(a), str(b)], "already exists")):
        r = CliRunner().invoke(app, ["merge", *args, "--out", str(tmp_path / "m")])
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, (args, r.output)


# ------------------------------------------------------------------ --eval

def test_compare_flags_metrics_where_the_merge_beats_both_parents():
    from loralab.study.merging import compare

    def m(loss, acc):
        return {"in_domain_extra": {"sport": {"adapter": {"loss": loss}}},
                "forgetting": {"adapter_mean": {"mean": acc}}}

    rows = {r["metric"]: r for r in compare(m(1.0, 0.50), [m(1.2, 0.55), m(0.9, 0.40)])}
    assert rows["in-domain loss: sport"]["beats_both"] is False  # 1.0 is not below 0.9
    assert rows["general accuracy (mean)"]["beats_both"] is False
    rows = {r["metric"]: r for r in compare(m(0.8, 0.6), [m(1.2, 0.55), m(0.9, 0.40)])}
    assert all(r["beats_both"] for r in rows.values()) and rows["in-domain loss: sport"]["parents"] == [1.2, 0.9]


def test_eval_runs_the_drift_suite_on_merge_and_parents(tiny, tmp_path):
    from loralab.data.records import Record, write_records
    from loralab.study.merging import evaluate_merge

    parents = []
    for i, dom in enumerate(("sport", "medical")):
        recs = [Record(kind="qa", domain=dom, source={"doc": f"{dom}{j}"}, question=f"{dom} question {j}?",
                       answer=f"{dom} answer {j}.") for j in range(10)]
        write_records(tmp_path / f"data_{dom}", recs)
        f = make_adapter(tiny, tmp_path / dom, seed=i + 1)
        card = json.loads((f / "loralab.json").read_text())
        card.update(domain=dom, data={"path": str(tmp_path / f"data_{dom}")}, config={"eval_frac": 0.3, "seed": 0})
        (f / "loralab.json").write_text(json.dumps(card))
        parents.append(str(f))
    merge(MergeConfig(parents=parents, method="linear", out=str(tmp_path / "m")))
    res = evaluate_merge(str(tmp_path / "m"), parents, out=str(tmp_path / "ev"), progress=False, tasks=["arc_easy"],
                         limit=3, gen_tasks=[], contamination=False, weights=False, bootstrap=100, dtype="float32",
                         device="cpu")
    assert res["parents"] == ["sport", "medical"] and set(res["heldout"]) == {"sport", "medical"}
    metrics = {r["metric"] for r in res["rows"]}
    assert {"in-domain loss: sport", "in-domain loss: medical", "general accuracy (mean)", "arc_easy acc_norm"} <= metrics
    saved = json.loads((tmp_path / "ev" / "comparison.json").read_text())
    assert saved["merges"]["m"]["rows"] == json.loads(json.dumps(res["rows"]))
    assert [r["model"] for r in saved["table"]] == ["m", "sport", "medical"] and "gain sport" in saved["table"][0]
    # the same held-out records for all three: the merge's row equals its own metrics.json
    mm = json.loads((tmp_path / "ev" / "m" / "metrics.json").read_text())
    row = next(r for r in res["rows"] if r["metric"] == "in-domain loss: sport")
    assert row["merge"] == mm["in_domain_extra"]["sport"]["adapter"]["loss"]
    assert row["beats_both"] == (row["merge"] < min(row["parents"]))
    # paired difference merge − parent on the same records: its point is the difference of the two losses
    for d, v in zip(row["diff"], row["parents"]):
        assert abs(d["mean"] - (row["merge"] - v)) < 1e-9 and d["lo"] <= d["mean"] <= d["hi"] and "p_holm" in d
    assert row["beats_both_significant"] is (row["beats_both"] and all(d["p_holm"] < 0.05 and d["hi"] < 0
                                                                          for d in row["diff"]))


def test_findings_are_computed_from_the_numbers():
    from loralab.study.merging import findings, markdown_table

    def ci(m):
        return {"mean": m, "lo": m - 0.1, "hi": m + 0.1}

    table = [{"model": "ties", "gain sport": ci(0.5), "gain medical": ci(0.2), "general acc change": ci(-0.01)},
             {"model": "sport", "gain sport": ci(1.0), "gain medical": ci(-0.1), "general acc change": ci(-0.02)},
             {"model": "medical", "gain sport": ci(0.0), "gain medical": ci(0.8), "general acc change": ci(0.0)}]
    row = {"metric": "in-domain loss: sport", "beats_both": True, "beats_both_significant": False}
    summary = {"parents": ["sport", "medical"], "table": table, "merges": {"ties": {"rows": [row]}}}
    lines = findings(summary)
    assert lines[0].startswith("ties keeps 50 % of sport's sport gain, 25 % of medical's medical gain")
    assert "general accuracy -1.0 [-11.0, +9.0] points" in lines[0]
    assert "point estimate only: in-domain loss: sport" in lines[0]
    assert lines[-1].startswith("No merge beats both parents")
    md = markdown_table(summary)
    assert md[0] == "| model | gain sport (nats/token) | gain medical (nats/token) | general acc Δ (pts) |"
    assert md[2] == "| ties | +0.500 [+0.400, +0.600] | +0.200 [+0.100, +0.300] | -1.0 [-11.0, +9.0] |"


@pytest.mark.slow
def test_smoke_real_model(smol, tmp_path):
    """SmolLM2: two all-linear adapters merged by TIES through the CLI, with --full; the merged adapter
    (PEFT) and the full model agree up to the adapter's reported truncation."""
    from peft import PeftModel

    from loralab import models

    a = make_adapter(smol, tmp_path / "a", r=8, seed=1, targets=("q_proj", "v_proj"), scale=0.02)
    b = make_adapter(smol, tmp_path / "b", r=8, seed=2, targets=("q_proj", "v_proj"), scale=0.02)
    r = CliRunner().invoke(app, ["merge", str(a), str(b), "--method", "ties", "--density", "0.5", "--full",
                                 "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    card = json.loads((tmp_path / "m" / "loralab.json").read_text())
    assert card["merge"]["svd"]["rank"] == 16 and 0 < card["merge"]["svd"]["rel_error"] < 1
    full = models.load(str(tmp_path / "m" / "full"), device="cpu", dtype="float32")
    base = models.load("smollm2-135m", device="cpu", dtype="float32")
    with torch.no_grad():
        plain = base.model(input_ids=IDS).logits
        exact = full.model(input_ids=IDS).logits
        merged = PeftModel.from_pretrained(base.model, str(tmp_path / "m"))(input_ids=IDS).logits
    effect = float((exact - plain).abs().max())
    assert effect > 1e-3  # the merge changes the model
    assert float((merged - exact).abs().max()) < effect  # the rank-16 adapter is close to the exact merge


def test_default_rank_keeps_the_merge_within_one_percent_or_refuses(pair, tmp_path):
    """ties / magnitude / dare make a full-rank delta: the default rank is the smallest within 1 % per
    module (checked against the exact merged delta), and a merge that would need an adapter larger
    than the dense delta is refused with the reason and the way out (--rank or --full)."""
    root, a, b = pair
    # density 1: magnitude keeps every entry, a weighted sum of two low-rank deltas (rank <= Σr)
    card = merge(MergeConfig(parents=[str(a), str(b)], method="magnitude", density=1.0, out=str(tmp_path / "m1")))
    svd = card["merge"]["svd"]
    assert svd["rank_rule"] == "smallest within 0.01" and svd["max_rel_error"] <= 0.01
    pa, pb = read_adapter(str(a)), read_adapter(str(b))
    got = read_adapter(str(tmp_path / "m1"))
    for n, mod in got.modules.items():
        exact = sum(0.5 * p.modules[n].delta() for p in (pa, pb) if n in p.modules)
        assert float((mod.delta() - exact).norm() / exact.norm()) <= 0.01 + 1e-6
    assert card["merge"]["threads"]["threads"] >= 1 and card["merge"]["threads"]["chosen"] == "measured"
    with pytest.raises(MergeError, match=r"ties: keeping the merge within 1% needs rank \d+ .*--full.*--rank"):
        merge(MergeConfig(parents=[str(a), str(b)], method="ties", density=0.5, out=str(tmp_path / "m2")))
    assert not (tmp_path / "m2").exists()  # nothing written
    full = merge(MergeConfig(parents=[str(a), str(b)], method="ties", density=0.5, full=True, out=str(tmp_path / "m3")))
    assert full["merge"]["svd"]["rank_rule"] == "default" and (tmp_path / "m3" / "full").is_dir()


def test_slerp_takes_t_not_weights_and_no_base():
    with pytest.raises(ValueError, match="not weights"):
        MergeConfig(parents=["a", "b"], method="slerp", weights=[0.5, 0.5], out="o")
    with pytest.raises(ValueError, match="mergekit's SLERP"):
        MergeConfig(parents=["a", "b"], method="slerp", base="c", out="o")
