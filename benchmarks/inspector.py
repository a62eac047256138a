"""Inspector latency: a token click and a slider move on SmolLM2 with two adapters, as the page asks them.

    python benchmarks/inspector.py                 # SmolLM2-135M (fp32 in the inspector), 2 adapters
    python benchmarks/inspector.py --tokens 120    # a longer continuation

What the page sends, timed in-process (no HTTP): the field of a continuation (base + mix),
a click on a token (position detail: base, each adapter, the mix), a slider move (the field at a
new strength, then the open position again), and the same click again (cached); then, as the
server does after every field request, the sides a click shows computed in the background
(`field.prefetch_sides`) and a click once they are there. Each figure is
the median of --repeats, every repeat on a fresh inspector (cold: nothing cached) except the
cached click. Adapters: random rank-8 LoRA on every linear layer (seeded). Goals of the
inspector issue on an idle machine: a click < 300 ms, a slider move < 1 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from serve import cpu_name, make_registry  # noqa: E402

PROMPT = "Who won the game on Sunday, and how?"
TEXT = ("The Bears won it by three points after Kevin Brown kicked a 42-yard field goal with eleven seconds "
        "left, ending a drive that began on their own 20-yard line. ")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=60, help="continuation length in tokens (about)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import torch

    from loralab import models
    from loralab.serve.inspect import field as fld

    base = models.load(args.model)
    root = Path(tempfile.mkdtemp(prefix="loralab-bench-inspector-"))
    names = make_registry(args.model, root, 2, 8)
    tok = base.tokenizer
    text = TEXT
    while len(tok.encode(text, add_special_tokens=False)) < args.tokens:
        text += TEXT
    ids = tok.encode(text, add_special_tokens=False)[: args.tokens]
    text = tok.decode(ids)
    w1 = {names[0]: 1.0, names[1]: 0.5}
    w2 = {names[0]: 1.2, names[1]: 0.5}
    pos = len(ids) // 2
    times: dict[str, list[float]] = {k: [] for k in ("field", "click", "slider", "click again",
                                                     "background prefetch after a field", "click after the prefetch")}
    passes: dict[str, int] = {}
    for _ in range(args.repeats):
        ins = fld.Inspector.load(base, {n: root / n for n in names})

        def timed(label, fn):
            p0, t = ins.passes, time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t)
            passes[label] = ins.passes - p0

        timed("field", lambda: fld.token_field(ins, PROMPT, text, w1))
        timed("click", lambda: fld.position_detail(ins, PROMPT, text, w1, pos))
        timed("slider", lambda: (fld.token_field(ins, PROMPT, text, w2), fld.position_detail(ins, PROMPT, text, w2, pos)))
        timed("click again", lambda: fld.position_detail(ins, PROMPT, text, w2, pos + 1))
        ins = fld.Inspector.load(base, {n: root / n for n in names})  # as the server runs it: the field
        fld.token_field(ins, PROMPT, text, w1)                          # starts the sides a click shows
        timed("background prefetch after a field", lambda: fld.prefetch_sides(ins, PROMPT, text, w1).join())
        timed("click after the prefetch", lambda: fld.position_detail(ins, PROMPT, text, w1, pos))
    print(f"model {base.spec}, inspector in {ins.precision['dtype']}; {len(ids)}-token continuation, 2 adapters "
          f"(random rank 8); median of {args.repeats}; {torch.get_num_threads()} threads; cpu: {cpu_name()}")
    print("| request | forwards | median ms | min ms |")
    print("|---|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {passes[k]} | {statistics.median(v) * 1e3:.0f} | {min(v) * 1e3:.0f} |")


if __name__ == "__main__":
    main()
