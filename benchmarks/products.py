"""The decode step's weight products alone, against the whole step and the memory-bandwidth bound.

    python benchmarks/products.py                      # SmolLM2-135M, the decoder's dtype, rows 1 8 32
    python benchmarks/products.py --rows 1 --repeats 9

A decode step's floor on this machine: the static decoder's 121 matrix products (4 fused linears
per layer and the vocabulary head, with the real model's weights, pre-packed for oneDNN as the
decoder packs them) timed alone, back to back, for B rows of one token each, beside the same
products through plain `F.linear` and beside the decoder's whole step (`StaticDecoder.forward`, a
26-token prompt, then decode steps at positions 26 onward, base weights, no adapters). Printed per
row count: milliseconds per step (median of --repeats after a warm-up), the weights' bytes over
that time, and the share of the bound (bytes of weights / measured read bandwidth, as
`decode.py` computes it). Whatever the rest of the step costs, B x 1000 / (products' ms) is the
most tokens/s a decoder built on these kernels can reach: the products are the only kernels found
that give transformers' exact numbers (`static.py` checks the packed product bit-equal to
`F.linear`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import decode  # noqa: E402
from decode import bandwidth, cpu_name  # noqa: E402


def median_ms(fn) -> float:
    """Median milliseconds of decode.REPEATS calls after a warm-up (decode.py's timing)."""
    return statistics.median(decode.timed(fn)) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--repeats", type=int, default=15)
    a = ap.parse_args()
    decode.REPEATS = max(1, a.repeats)
    import torch.nn.functional as F

    from loralab import models
    from loralab.serve.static import GROUPS, StaticDecoder, _cat

    loaded = models.load(a.model)
    model = loaded.model
    dec = StaticDecoder(model, None, max_batch=max(a.rows))
    lins = [lin[k] for _, _, lin, _, _ in dec.layers for k, _ in GROUPS] + [dec.head]
    # the plain weights, concatenated by the decoder's own grouping (it keeps only the packed copies)
    weights = [_cat([layer.get_submodule(n) for n in names], "weight")
               for layer in model.model.layers for _, names in GROUPS]
    weights.append(model.get_output_embeddings().weight.detach())
    nbytes = sum(w.numel() * w.element_size() for w in weights)
    bw = bandwidth()
    bound_ms = nbytes / bw * 1000
    print(f"model {a.model} ({str(dec.dtype).removeprefix('torch.')}), {len(lins)} products per step, "
          f"{nbytes / 1e6:.0f} MB of weights; packed for oneDNN: {dec.packed}; {torch.get_num_threads()} threads; "
          f"cpu: {cpu_name()}")
    print(f"measured read bandwidth {bw / 1e9:.1f} GB/s -> bound {bound_ms:.2f} ms per step\n")
    print("| rows | products, as the decoder runs them | products, plain F.linear | whole decode step | "
          "products' share of the step | tokens/s ceiling from the products | whole step's tokens/s |")
    print("|---|---|---|---|---|---|---|")
    ids = torch.randint(100, 1000, (max(a.rows), 26))
    with torch.inference_mode():
        for B in a.rows:
            xs = {n: torch.randn(B, 1, n, dtype=dec.dtype) for n in {w.shape[1] for w in weights}}
            packed = median_ms(lambda: [lin(xs[w.shape[1]]) for lin, w in zip(lins, weights)])
            flat = median_ms(lambda: [F.linear(xs[w.shape[1]], w) for w in weights])
            dec.forward(ids[:B], range(0, B), 0)
            tok = torch.randint(100, 1000, (B, 1))
            pos = iter(range(26, 26 + a.repeats + 1))
            step = median_ms(lambda: dec.forward(tok, range(0, B), torch.full((B,), next(pos))))

            def gbs(ms):
                return f"{ms:.1f} ms ({nbytes / ms / 1e6:.1f} GB/s, {100 * bound_ms / ms:.0f} % of the bound)"
            print(f"| {B} | {gbs(packed)} | {gbs(flat)} | {gbs(step)} | {100 * packed / step:.0f} % | "
                  f"{B * 1000 / packed:.0f} | {B * 1000 / step:.0f} |", flush=True)


if __name__ == "__main__":
    main()
