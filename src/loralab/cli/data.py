"""`loralab data ingest|clean|corrupt|structure|render`: the data lab verbs.

    loralab data ingest notes/ qa.jsonl olmo:drop-nfl --out data/raw
    loralab data clean data/raw --out data/clean --near-dup 0.8
    loralab data corrupt data/clean --out data/noisy --rate 0.05 --seed 0
    loralab data structure data/clean --out data/qa --mode template
    loralab data render data/qa --fmt alpaca --out data/qa.alpaca.jsonl

Each stage prints its reconciliation (read = kept + quarantined per input file) and
exits with status 1 only when no usable record remains.
"""

from __future__ import annotations

from pathlib import Path

import typer

from .app import data_app, fail, out


def _report(card: dict) -> None:
    from ..data.ledger import reasons_table, reconciliation_table

    summary = card["reconciliation"]
    out.print(reconciliation_table(summary))
    if summary["quarantine_reasons"]:
        out.print(reasons_table(summary))
    if summary.get("repairs"):
        out.print("repaired: " + ", ".join(f"{k} {v}" for k, v in summary["repairs"].items()))
    recs = card["records"]
    out.print(f"{recs['total']} records ({', '.join(f'{k} {v}' for k, v in recs['by_kind'].items())}); "
              f"split by document: train {card['split']['records']['train']}, eval {card['split']['records']['eval']}")
    if not card["checks"]["balanced"]:
        fail("reconciliation does not balance (read != kept + quarantined); this is a bug", code=3)
    if recs["total"] == 0:
        fail("no usable records remain", code=1)


def _need_records(path: str) -> None:
    if not (Path(path) / "records.jsonl").exists():
        fail(f"{path} is not a records folder (no records.jsonl); run `loralab data ingest` first")


@data_app.command("ingest")
def ingest_cmd(
    paths: list[str] = typer.Argument(..., help="Files, folders, saved HF datasets, hub ids or olmo:<name>."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Records folder to write."),
    domain: str = typer.Option(None, help="Domain label for every record."),
    chunk_tokens: int = typer.Option(512, help="Token budget of one raw chunk."),
    limit: int = typer.Option(None, help="At most this many items per source."),
    max_record_chars: int = typer.Option(50_000, help="Larger Q&A/instruction/chat records are quarantined."),
    seed: int = typer.Option(0, help="Seed of the split recorded in the card."),
) -> None:
    """Read any mix of sources into one records folder, quarantining what cannot be used."""
    from ..data.ingest import IngestConfig, ingest

    cfg = IngestConfig(domain=domain, chunk_tokens=chunk_tokens, limit=limit, max_record_chars=max_record_chars,
                       seed=seed)
    _report(ingest(paths, out_dir, cfg))
    out.print(f"wrote {out_dir}")


@data_app.command("clean")
def clean_cmd(
    in_dir: str = typer.Argument(..., help="Records folder."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Records folder to write."),
    near_dup: float = typer.Option(0.8, help="MinHash Jaccard threshold for near duplicates (1 = off)."),
    language: str = typer.Option("en", help="Keep only this language ('en' or 'any')."),
    min_chars: int = typer.Option(20, help="Shorter records are quarantined."),
    max_chars: int = typer.Option(50_000, help="Longer records are quarantined."),
    max_garbage: float = typer.Option(0.2, help="Largest share of garbage characters kept."),
) -> None:
    """Repair unicode and OCR damage; drop garbage, other languages, duplicates and near duplicates."""
    from ..data.clean import CleanConfig, clean

    _need_records(in_dir)
    cfg = CleanConfig(near_dup=near_dup, language=None if language == "any" else language, min_chars=min_chars,
                      max_chars=max_chars, max_garbage=max_garbage)
    _report(clean(in_dir, out_dir, cfg))
    out.print(f"wrote {out_dir}")


@data_app.command("corrupt")
def corrupt_cmd(
    in_dir: str = typer.Argument(..., help="Records folder."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Records folder to write."),
    rate: float = typer.Option(0.05, help="Share of characters / word gaps hit by OCR-like noise."),
    seed: int = typer.Option(0, help="Noise seed."),
) -> None:
    """Inject seeded OCR-like noise into responses (records link to their clean originals)."""
    from ..data.corrupt import corrupt

    _need_records(in_dir)
    _report(corrupt(in_dir, out_dir, rate=rate, seed=seed))
    out.print(f"wrote {out_dir}")


@data_app.command("structure")
def structure_cmd(
    in_dir: str = typer.Argument(..., help="Records folder."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Records folder to write."),
    mode: str = typer.Option("template", help="template | model"),
    model: str = typer.Option("smollm2-135m", help="Model spec for --mode model."),
    limit: int = typer.Option(None, help="Structure at most this many raw records."),
    max_new_tokens: int = typer.Option(64, help="Generation budget per chunk (--mode model)."),
    seed: int = typer.Option(0, help="Seed of template choices."),
) -> None:
    """Turn raw passages into Q&A / instruction records, checked against their passage."""
    from ..data.structure import StructureConfig, structure

    _need_records(in_dir)
    if mode not in ("template", "model"):
        fail("--mode must be template or model")
    cfg = StructureConfig(mode=mode, model=model, limit=limit, max_new_tokens=max_new_tokens, seed=seed)
    _report(structure(in_dir, out_dir, cfg))
    out.print(f"wrote {out_dir}")


@data_app.command("render")
def render_cmd(
    in_dir: str = typer.Argument(..., help="Records folder."),
    fmt: str = typer.Option("chat", "--fmt", help="chat | alpaca | json | yaml | plain"),
    out_file: Path = typer.Option(..., "--out", "-o", help="JSONL file of {id, prompt, response}."),
) -> None:
    """Write each record as (prompt, response) text in a surface format."""
    from ..data.render import FORMATS, render_folder

    _need_records(in_dir)
    if fmt not in FORMATS:
        fail(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    n = render_folder(in_dir, fmt, out_file)
    out.print(f"wrote {n} rendered records to {out_file}")
