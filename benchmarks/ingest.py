"""Ingest throughput and memory on a large JSONL: records/s and RSS while streaming.

    python benchmarks/ingest.py                 # ~1 GB (a few minutes on 2 cores)
    python benchmarks/ingest.py --size-mb 200   # quicker

Writes a JSONL of the given size into a temp dir (a mix of Alpaca, Q&A, chat and text
rows, with ~1% malformed lines and ~0.5% rows of the wrong type), ingests it with
`loralab.data.ingest.ingest`, and prints records/s and the resident set size sampled
every 0.2 s, at 10%, 50% and 100% of the input read, plus the peak. Reading and writing
stream, so RSS should stay flat while the input is read; the data card pass that follows
tracks documents and content ids exactly only up to a fixed cap, so it stays bounded too.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def input_pos(path: str) -> int | None:
    """Read position of this process's open handle on `path` (None when it is not open)."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == path:
                with open(f"/proc/self/fdinfo/{fd}") as f:
                    return int(f.readline().split()[1])
        except OSError:
            continue
    return None


def make_jsonl(path: Path, size_mb: int, seed: int = 0) -> tuple[int, int]:
    """(lines, bad lines) of a generated file of about size_mb megabytes."""
    rng = random.Random(seed)
    words = ("quarterback touchdown field goal season yard drive defence coach kick pass run score "
             "team game half quarter lead win loss fans stadium").split()
    target, n, bad = size_mb * 2**20, 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while f.tell() < target:
            s = " ".join(rng.choice(words) for _ in range(rng.randint(8, 40)))
            k = rng.random()
            if k < 0.01:
                line, bad = '{"text": "broken ' + s[:40], bad + 1
            elif k < 0.015:
                line, bad = json.dumps({"text": rng.randint(0, 9)}), bad + 1
            elif k < 0.35:
                line = json.dumps({"instruction": f"Describe play {n}.", "input": s[:60], "output": s})
            elif k < 0.6:
                line = json.dumps({"question": f"What happened on drive {n}?", "answer": s})
            elif k < 0.8:
                line = json.dumps({"messages": [{"role": "user", "content": f"Tell me about game {n}."},
                                                {"role": "assistant", "content": s}]})
            else:
                line = json.dumps({"text": f"Game {n}. " + s})
            f.write(line + "\n")
            n += 1
    return n, bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024, help="size of the generated JSONL")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()

    from loralab.data.ingest import IngestConfig, ingest

    tmp = Path(tempfile.mkdtemp(prefix="loralab-ingest-bench-"))
    try:
        src = tmp / "big.jsonl"
        t0 = time.time()
        lines, bad = make_jsonl(src, args.size_mb)
        size = src.stat().st_size
        print(f"generated {size / 2**20:.0f} MiB, {lines:,} lines ({bad:,} broken) in {time.time() - t0:.0f} s")
        samples: list[tuple[float, float, float | None]] = []  # (seconds, RSS MiB, fraction of input read)
        stop = threading.Event()

        def sample() -> None:
            start = time.time()
            while not stop.is_set():
                pos = input_pos(str(src))
                samples.append((time.time() - start, rss_mb(), None if pos is None else pos / size))
                stop.wait(0.2)

        th = threading.Thread(target=sample, daemon=True)
        base = rss_mb()
        th.start()
        t0 = time.time()
        card = ingest([str(src)], tmp / "out", IngestConfig(progress=False, token_sample=500))
        dt = time.time() - t0
        stop.set()
        th.join()
        tot = card["reconciliation"]["totals"]
        print(f"ingest: {tot['records']:,} records kept, {tot['quarantined']:,} quarantined of {tot['read']:,} read "
              f"(balanced: {tot['balanced']}) in {dt:.1f} s -> {tot['read'] / dt:,.0f} records/s, "
              f"{size / 2**20 / dt:.1f} MiB/s (including the data card pass)")
        print(f"RSS before: {base:.0f} MiB")
        for frac in (0.1, 0.5, 1.0):
            hit = next((s for s in samples if s[2] is not None and s[2] >= frac - 1e-9), None)
            if frac == 1.0:  # the last sample taken while the input was still open
                hit = next((s for s in reversed(samples) if s[2] is not None), hit)
            if hit:
                print(f"RSS at {frac:>4.0%} of input read: {hit[1]:.0f} MiB (t={hit[0]:.0f} s)")
        import resource

        print(f"peak RSS (whole run, card pass included): {max(s[1] for s in samples):.0f} MiB sampled, "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB by getrusage")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
