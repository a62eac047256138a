"""`loralab rag`: build and query a retrieval index; the LoRA + RAG experiment.

    loralab rag index runs/data/sport-raw notes/ olmo:drop-nfl --out idx/
    loralab rag query idx/ "Who kicked the longest field goal?" -k 3
    loralab rag eval studies/rag.yaml            # base / base+RAG / adapter / adapter+RAG
"""

from __future__ import annotations

import json
from typing import Optional

import typer

from .app import app, out

rag_app = typer.Typer(no_args_is_help=True, help="Retrieval: index documents, query them, measure LoRA + RAG.")
app.add_typer(rag_app, name="rag")


@rag_app.command("index")
def index_cmd(
    docs: list[str] = typer.Argument(..., help="Records folders, files, folders or olmo:<name> corpora."),
    out_dir: str = typer.Option(..., "--out", "-o", help="Index folder (created, or added to)."),
    chunk: int = typer.Option(120, help="Words per chunk."),
    overlap: int = typer.Option(20, help="Words shared by consecutive chunks."),
    shard_rows: int = typer.Option(512, help="Chunks per shard (the unit of resumption)."),
    embedder: Optional[str] = typer.Option(None, help="all-MiniLM-L6-v2 (English) | multilingual-e5-small "
                                           "(questions in Russian and ~90 more languages find English notes); "
                                           "default: the index's own when adding to one, else MiniLM."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Chunk, embed and index documents; re-running adds only what is new."""
    from ..data.sources import missing_sources
    from ..errors import UserError
    from ..rag import build_index, open_index

    missing = missing_sources(docs)
    if missing:
        raise UserError(f"no such input: {', '.join(missing)}")
    from pathlib import Path

    from ..rag import MANIFEST

    if embedder is None and (Path(out_dir) / MANIFEST).is_file():
        embedder = open_index(out_dir).embedder
    st = build_index(docs, out_dir, chunk=chunk, overlap=overlap, shard_rows=shard_rows, progress=not quiet,
                     embedder=embedder)
    idx = open_index(out_dir)
    out.print(f"{st['records_added']} records added, {st['records_skipped']} already indexed, "
              f"{st['shards_written']} new shards; {len(idx)} chunks from "
              f"{len({c['source'] for c in idx.chunks})} documents ({idx.backend} search) → {out_dir}")


@rag_app.command("query")
def query_cmd(
    index: str = typer.Argument(..., help="Index folder."),
    question: str = typer.Argument(..., help="The question."),
    k: int = typer.Option(3, "-k", help="Passages to return."),
    mode: str = typer.Option("dense", help="dense | hybrid (dense and BM25 fused by reciprocal rank)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Print the top-k passages for a question, with their source ids."""
    from ..rag import open_index

    idx = open_index(index)
    hits = idx.search(question, k, mode=mode)
    if as_json:
        out.print_json(json.dumps({"question": question, "passages": [h.to_json() for h in hits]}))
        return
    for n, h in enumerate(hits, 1):
        out.print(f"[bold][{n}] {h.id}[/]  score {h.score:.3f}  source {h.source}")
        out.print(h.text)


@rag_app.command("recall")
def recall_cmd(
    index: str = typer.Argument(..., help="Index folder."),
    questions: str = typer.Argument(..., help="JSONL: id, lang, question, doc, answer (e.g. "
                                    "benchmarks/retrieval/questions.jsonl)."),
    ks: list[int] = typer.Option([1, 3, 5], "-k", help="Cut-offs (repeatable)."),
    mode: list[str] = typer.Option(["dense", "hybrid"], "--mode", help="Search modes to measure (repeatable)."),
    out_file: Optional[str] = typer.Option(None, "--out", "-o", help="JSON report."),
) -> None:
    """Recall@k of the answer-bearing chunk on a labelled question set, by language, with intervals."""
    from ..evaluate.retrieval import read_questions, retrieval_recall
    from ..io import write_json
    from ..rag import open_index

    idx = open_index(index)
    qs = read_questions(questions)
    reports = {m: retrieval_recall(idx, qs, ks, mode=m) for m in mode}
    for m, r in reports.items():
        out.print(f"[bold]{m}[/] ({r['embedder']}, {r['chunks']} chunks, {r['n']} questions)")
        for g, ms in r["by"].items():
            cells = "  ".join(f"{name} {100 * c['mean']:.0f} % [{100 * c['lo']:.0f}, {100 * c['hi']:.0f}] (n={c['n']})"
                              for name, c in ms.items() if name.startswith("recall"))
            out.print(f"  {g}: {cells}")
    if out_file:
        write_json(out_file, {"index": index, "questions": questions, "modes": reports})
        out.print(f"→ {out_file}")


@rag_app.command("eval")
def eval_cmd(
    spec: str = typer.Argument(..., help="YAML spec (see studies/rag.yaml)."),
    out_dir: Optional[str] = typer.Option(None, "--out", "-o", help="Folder for results (default: the spec's)."),
    limit: Optional[int] = typer.Option(None, help="Held-out questions (overrides the spec)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Answer held-out domain questions four ways (base, base+RAG, adapter, adapter+RAG)."""
    from ..ragstudy import load_spec, run

    s = load_spec(spec, out=out_dir, limit=limit)
    res = run(s, progress=not quiet)
    out.print(res["table"])
    out.print(res["finding"])
    out.print(f"→ {res['path']}")
