"""`loralab data ingest|clean|corrupt|structure|render`: the data lab verbs.

    loralab data ingest notes/ qa.jsonl olmo:drop-nfl --out data/raw
    loralab data clean data/raw --out data/clean --near-dup 0.8
    loralab data corrupt data/clean --out data/noisy --rate 0.05 --seed 0
    loralab data structure data/clean --out data/qa --mode template
    loralab data render data/qa --fmt alpaca --out data/qa.alpaca.jsonl

Each stage prints its reconciliation (read = kept + quarantined per input file) and
exits with status 1 only when no usable record remains. Inputs and settings are checked
before anything is written; an existing --out is replaced only with --overwrite, and a
folder being written by another process is refused (see loralab.io.claim_output).
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..config import build
from ..errors import UserError
from ..io import claim_output
from .app import data_app, fail, out

OVERWRITE = typer.Option(False, "--overwrite", help="Replace --out if it exists.")


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
    p = Path(path)
    if not p.exists():
        raise UserError(f"{path}: no such records folder")
    if not (p / "records.jsonl").exists():
        raise UserError(f"{path} is not a records folder (no records.jsonl); run `loralab data ingest` first")


def _distinct(in_dir: str, out_dir: Path) -> None:
    if Path(in_dir).resolve() == Path(out_dir).resolve():
        raise UserError(f"--out {out_dir} is the input folder; write to another folder")


@data_app.command("ingest")
def ingest_cmd(
    paths: list[str] = typer.Argument(..., help="Files, folders, saved HF datasets, hub ids or olmo:<name>."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Records folder to write."),
    domain: str = typer.Option(None, help="Domain label for every record."),
    chunk_tokens: int = typer.Option(512, help="Token budget of one raw chunk."),
    limit: int = typer.Option(None, help="At most this many items per source."),
    max_record_chars: int = typer.Option(50_000, help="Larger Q&A/instruction/chat records are quarantined."),
    seed: int = typer.Option(0, help="Seed of the split recorded in the card."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Read any mix of sources into one records folder, quarantining what cannot be used."""
    from ..data.ingest import IngestConfig, ingest
    from ..data.sources import missing_sources

    cfg = build(IngestConfig, domain=domain, chunk_tokens=chunk_tokens, limit=limit,
                max_record_chars=max_record_chars, seed=seed)
    if missing := missing_sources(paths):
        raise UserError("cannot ingest: " + "; ".join(missing))
    with claim_output(out_dir, overwrite=overwrite):
        card = ingest(paths, out_dir, cfg)
    _report(card)
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
    overwrite: bool = OVERWRITE,
) -> None:
    """Repair unicode and OCR damage; drop garbage, other languages, duplicates and near duplicates."""
    from ..data.clean import CleanConfig, clean

    cfg = build(CleanConfig, near_dup=near_dup, language=None if language == "any" else language,
                min_chars=min_chars, max_chars=max_chars, max_garbage=max_garbage)
    _need_records(in_dir)
    _distinct(in_dir, out_dir)
    with claim_output(out_dir, overwrite=overwrite):
        card = clean(in_dir, out_dir, cfg)
    _report(card)
    out.print(f"wrote {out_dir}")


@data_app.command("corrupt")
def corrupt_cmd(
    in_dir: str = typer.Argument(..., help="Records folder."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Records folder to write."),
    rate: float = typer.Option(0.05, help="Share of characters / word gaps hit by OCR-like noise."),
    seed: int = typer.Option(0, help="Noise seed."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Inject seeded OCR-like noise into responses (records link to their clean originals)."""
    from ..data.corrupt import CorruptConfig, corrupt

    cfg = build(CorruptConfig, rate=rate, seed=seed)
    _need_records(in_dir)
    _distinct(in_dir, out_dir)
    with claim_output(out_dir, overwrite=overwrite):
        card = corrupt(in_dir, out_dir, cfg)
    _report(card)
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
    overwrite: bool = OVERWRITE,
) -> None:
    """Turn raw passages into Q&A / instruction records, checked against their passage."""
    from ..data.structure import StructureConfig, structure

    cfg = build(StructureConfig, mode=mode, model=model, limit=limit, max_new_tokens=max_new_tokens, seed=seed)
    _need_records(in_dir)
    _distinct(in_dir, out_dir)
    if cfg.mode == "model":
        from ..models import check_spec

        check_spec(cfg.model)
    with claim_output(out_dir, overwrite=overwrite):
        card = structure(in_dir, out_dir, cfg)
    _report(card)
    out.print(f"wrote {out_dir}")


@data_app.command("render")
def render_cmd(
    in_dir: str = typer.Argument(..., help="Records folder."),
    fmt: str = typer.Option("chat", "--fmt", help="chat | alpaca | json | yaml | plain"),
    out_file: Path = typer.Option(..., "--out", "-o", help="JSONL file of {id, prompt, response}."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Write each record as (prompt, response) text in a surface format."""
    from ..config import suggest
    from ..data.render import FORMATS, render_folder

    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}{suggest(fmt, FORMATS)}; choose one of {', '.join(FORMATS)}")
    _need_records(in_dir)
    if out_file.is_dir():
        raise UserError(f"--out {out_file} is a folder; render writes one JSONL file")
    with claim_output(out_file, overwrite=overwrite):
        n = render_folder(in_dir, fmt, out_file)
    out.print(f"wrote {n} rendered records to {out_file}")
