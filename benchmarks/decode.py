"""Decode speed: loralab's engine (static KV cache) beside transformers and llama.cpp, with the memory bound.

    python benchmarks/decode.py                           # SmolLM2-135M, batches 1 4 8 32, 64 new tokens
    python benchmarks/decode.py --batches 1 8 --new 32   # a quicker look

Every row generates `--new` tokens (greedy, EOS ignored) for B prompts of the same length and
reports generated tokens per second, prefill included, timed the same way (wall clock around one
call that returns when every row is done, after one untimed warm-up of that configuration; with
`--repeats R`, the median of R such calls and their range):
  static        loralab's engine, the static-cache decoder (`loralab serve`'s default)
  transformers  loralab's engine on the transformers forward (the previous serving path)
  hf-generate   transformers `generate` as a user runs it: PEFT model, adapters unmerged, dynamic
                cache; a mix of 8 via PEFT's per-row `adapter_names`
  hf-tuned      `generate` as one tunes it for one adapter: the adapter merged into the weights
                (no LoRA cost; a mix of adapters cannot be merged), static cache
  llama.cpp     llama-cpp-python (when installed) on the same weights converted to a bf16 GGUF, the
                adapter converted to a GGUF LoRA (converters from llama.cpp's source: $LLAMA_CPP_DIR);
                it runs one sequence at a time, so batch B is B requests in turn
  llama.cpp-q4  the same on the packaged Q4_1 GGUF (4-bit weights: fewer bytes per step, other numbers)
for three adapter settings: base, one adapter on every row, and each row a different one of 8.
The bound: decode step >= bytes of weights / measured memory bandwidth (a 512 MB read), so
tokens/s <= B x bandwidth / weight bytes; the table prints each row's share of it.
Adapters: random rank-8 LoRA on every linear layer (seeded), as `loralab train` writes them.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from serve import cpu_name, make_registry  # noqa: E402

PROMPT = ("Write a short report about the match: the home side scored early, the visitors answered "
          "before half time, and the second half")


def bandwidth() -> float:
    """Bytes per second of a 512 MB read (best of 5) with torch's threads."""
    x = torch.ones(128 * 1024 * 1024)
    x.sum()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.numel() * x.element_size() / best


def weight_bytes(model) -> int:
    """Bytes one decode step reads: every matrix once (a tied head counted once; the embedding
    lookup reads only B rows, counted with the head it shares)."""
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel() * p.element_size()
    return n


REPEATS = 1  # timed calls per cell (--repeats); the table shows their median


def timed(fn) -> list[float]:
    """Seconds of REPEATS calls of `fn`, after one untimed warm-up (allocations, packing, first dispatch)."""
    fn()
    out = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def rates(tokens: int, seconds: list[float]) -> list[float]:
    return [tokens / s for s in seconds]


def engine_rate(loaded, registry: Path, decode: str, B: int, adapters, ids: list[int], new: int) -> list[float]:
    from loralab.serve.engine import Engine, Sampling
    from loralab.serve.registry import Registry

    eng = Engine(loaded, Registry(registry), max_batch=max(B, 1), decode=decode)

    def run():
        hs = [eng.submit(ids, adapters(i), Sampling(max_tokens=new, ignore_eos=True)) for i in range(B)]
        while not eng._step_once():
            pass
        for h in hs:
            for _ in h.events():
                pass

    return rates(B * new, timed(run))


def stall(loaded, chunk: int, long_tokens: int = 2000) -> tuple[float, float]:
    """(longest gap between two tokens of a running answer while a `long_tokens` prompt is
    admitted, the typical gap before it) in seconds, with prefill chunks of `chunk` tokens."""
    from loralab.serve.engine import Engine, Sampling, Token

    eng = Engine(loaded, None, max_batch=4, prefill_chunk=chunk).start()
    try:
        tok = loaded.tokenizer
        run = eng.submit([tok.bos_token_id] + tok.encode(PROMPT, add_special_tokens=False),
                         None, Sampling(max_tokens=48, ignore_eos=True))
        filler = tok.encode(" the match went on and on", add_special_tokens=False)
        long_ = (filler * (long_tokens // len(filler) + 1))[:long_tokens]
        times, other = [], None
        for ev in run.events():
            if isinstance(ev, Token):
                times.append(time.perf_counter())
                if len(times) == 12:
                    other = eng.submit(long_, None, Sampling(max_tokens=1, ignore_eos=True))
        for _ in other.events():
            pass
    finally:
        eng.stop()
    gaps = [b - a for a, b in zip(times, times[1:])]
    return max(gaps[10:]), sorted(gaps[:10])[5]


def hf_rate(model, tok, B: int, names, ids: list[int], new: int, **kw) -> list[float]:
    x = torch.tensor([ids] * B)
    extra = {"adapter_names": [names(i) for i in range(B)]} if names else {}

    def run():
        with torch.inference_mode():
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=new,
                                 min_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id, **extra, **kw)
        assert out.shape[1] == len(ids) + new

    return rates(B * new, timed(run))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 32])
    ap.add_argument("--new", type=int, default=64, help="tokens generated per row")
    ap.add_argument("--skip", nargs="*", default=[], help="columns to leave out (e.g. hf-generate llama.cpp)")
    ap.add_argument("--repeats", type=int, default=1, help="timed calls per cell (the median is shown, with the "
                    "range when more than one)")
    args = ap.parse_args()
    global REPEATS
    REPEATS = max(1, args.repeats)

    from peft import PeftModel

    from loralab import models

    loaded = models.load(args.model)
    tok = loaded.tokenizer
    root = Path(tempfile.mkdtemp(prefix="loralab-bench-decode-"))
    names = make_registry(args.model, root, 8, 8)
    ids = [tok.bos_token_id] + tok.encode(PROMPT, add_special_tokens=False)
    bw, wb = bandwidth(), weight_bytes(loaded.model)
    step_bound = bw / wb
    settings = {"base": (lambda i: [], None), "one": (lambda i: [(names[0], 1.0)], lambda i: names[0]),
                "mix8": (lambda i: [(names[i % 8], 1.0)], lambda i: names[i % 8])}
    rows = []

    def add(col, setting, B, got):
        rate = statistics.median(got)
        rows.append((col, setting, B, rate))
        spread = f"  (range {min(got):.1f}-{max(got):.1f} over {len(got)} calls)" if len(got) > 1 else ""
        print(f"{col:<13} {setting:<5} B={B:<3} {rate:8.1f} tok/s  {rate / (B * step_bound):6.1%} of the bound{spread}",
              flush=True)

    for B in args.batches:
        for setting, (ads, _) in settings.items():
            for decode in ("static", "transformers"):
                if decode not in args.skip:
                    add(decode, setting, B, engine_rate(loaded, root, decode, B, ads, ids, args.new))
    if "hf-generate" not in args.skip:
        pm = PeftModel.from_pretrained(copy.deepcopy(loaded.model), str(root / names[0]), adapter_name=names[0])
        for n in names[1:]:
            pm.load_adapter(str(root / n), adapter_name=n)
        pm.eval()
        for B in args.batches:
            add("hf-generate", "base", B, hf_rate(loaded.model, tok, B, None, ids, args.new))
            for setting in ("one", "mix8"):
                add("hf-generate", setting, B, hf_rate(pm, tok, B, settings[setting][1], ids, args.new))
        del pm
    if "hf-tuned" not in args.skip:
        merged = PeftModel.from_pretrained(copy.deepcopy(loaded.model), str(root / names[0])).merge_and_unload()
        merged.eval()
        for B in args.batches:
            add("hf-tuned", "one", B, hf_rate(merged, tok, B, None, ids, args.new, cache_implementation="static"))
        del merged
    if "stall" not in args.skip:
        for chunk in (256, 4096):
            worst, typical = stall(loaded, chunk)
            print(f"2,000-token prompt admitted while an answer runs, prefill chunk {chunk}: longest gap "
                  f"between two of its tokens {worst * 1e3:.0f} ms (typical gap before: {typical * 1e3:.0f} ms)",
                  flush=True)
    if "llama.cpp" not in args.skip:
        for note in run_llama_cpp(loaded, root, names, ids, args):
            if isinstance(note, tuple):
                add(*note)
            else:
                print(note)

    print(f"\nmodel {loaded.spec} ({str(next(loaded.model.parameters()).dtype).removeprefix('torch.')}), "
          f"{len(ids)}-token prompt, {args.new} new tokens per row, greedy; {torch.get_num_threads()} threads; "
          f"cpu: {cpu_name()}")
    print(f"measured read bandwidth {bw / 1e9:.1f} GB/s; weights {wb / 1e6:.0f} MB per step -> bound "
          f"{step_bound:.0f} steps/s (B x that in tokens/s)")
    cols = []
    for c, *_ in rows:
        if c not in cols:
            cols.append(c)
    print("\n| setting | batch | " + " | ".join(cols) + " | bound |")
    print("|---|---|" + "---|" * (len(cols) + 1))
    for setting in settings:
        for B in args.batches:
            got = {c: r for c, s, b, r in rows if s == setting and b == B}
            print(f"| {setting} | {B} | " + " | ".join(f"{got[c]:.0f}" if c in got else "" for c in cols)
                  + f" | {B * step_bound:.0f} |")
    for setting in settings:
        for B in args.batches:
            got = {c: r for c, s, b, r in rows if s == setting and b == B}
            if "static" in got and "transformers" in got:
                line = f"{setting} B={B}: static / transformers = {got['static'] / got['transformers']:.2f}"
                for other in ("hf-generate", "hf-tuned", "llama.cpp", "llama.cpp-q4"):
                    if other in got:
                        line += f", static / {other} = {got['static'] / got[other]:.2f}"
                print(line)


def run_llama_cpp(loaded, root: Path, names: list[str], ids: list[int], args):
    """Rows (col, setting, B, tok/s) for llama.cpp, or lines saying why not.

    Two weight files: the packaged GGUF itself (Q4_1, what the embedded model ships as) and the
    same weights loralab serves, converted to a bf16 GGUF with llama.cpp's own converter; the
    adapter converted with llama.cpp's LoRA converter. The converters live in llama.cpp's source
    (the llama-cpp-python sdist's vendor/llama.cpp): point $LLAMA_CPP_DIR at that folder."""
    import os

    try:
        from llama_cpp import Llama
    except ImportError:
        yield "llama.cpp: llama-cpp-python is not installed here (pip install llama-cpp-python builds it from source)"
        return
    from loralab import models

    files = []
    try:
        files.append(("llama.cpp-q4", models.gguf_path(loaded.spec), None))
    except (KeyError, models.ModelError) as e:
        yield f"llama.cpp: no packaged GGUF for {loaded.spec}: {e}"
    src_dir = Path(os.environ.get("LLAMA_CPP_DIR", "")) if os.environ.get("LLAMA_CPP_DIR") else None
    if src_dir is None or not (src_dir / "convert_hf_to_gguf.py").exists():
        yield ("llama.cpp: bf16 weights and the GGUF LoRA not converted: set LLAMA_CPP_DIR to llama.cpp's source "
               "(convert_hf_to_gguf.py, convert_lora_to_gguf.py, gguf-py)")
    else:
        work = root / "gguf"
        work.mkdir(exist_ok=True)
        src = work / "hf"
        loaded.model.save_pretrained(src)
        loaded.tokenizer.save_pretrained(src)
        env = {**os.environ, "PYTHONPATH": str(src_dir / "gguf-py")}
        base = work / "model-bf16.gguf"
        r = subprocess.run([sys.executable, str(src_dir / "convert_hf_to_gguf.py"), str(src), "--outtype", "bf16",
                            "--outfile", str(base)], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            yield f"llama.cpp: converting the weights failed: {(r.stderr.strip().splitlines() or [''])[-1]}"
        else:
            lora = work / "adapter0.gguf"
            r = subprocess.run([sys.executable, str(src_dir / "convert_lora_to_gguf.py"), "--base", str(src),
                                "--outtype", "f32", "--outfile", str(lora), str(root / names[0])],
                               capture_output=True, text=True, env=env)
            if r.returncode != 0:
                yield f"llama.cpp: converting the adapter failed: {(r.stderr.strip().splitlines() or [''])[-1]}"
                lora = None
            files.append(("llama.cpp", base, lora))
    threads = torch.get_num_threads()
    for col, path, lora in files:
        for setting, kw in (("base", {}), ("one", {"lora_path": str(lora)} if lora else None)):
            if kw is None:
                continue
            llm = Llama(model_path=str(path), n_ctx=512, n_threads=threads, n_threads_batch=threads, n_batch=256,
                        verbose=False, **kw)
            for B in args.batches:
                def run():
                    for _ in range(B):  # one sequence at a time: B requests in turn
                        n = 0
                        for _t in llm.generate(ids, temp=0.0, top_k=1, reset=True):
                            n += 1
                            if n == args.new:
                                break

                yield (col, setting, B, rates(B * args.new, timed(run)))
            del llm
    yield ("llama.cpp: one sequence at a time (batch B = B requests in turn; llama-cpp-python's Llama decodes one "
           "sequence); a mix of adapters per request is not run")


if __name__ == "__main__":
    main()
