"""The inspector's routes: a static page and JSON endpoints over the pure functions.

    from loralab.serve.inspect import build_router
    app.include_router(build_router(models.load("smollm2-135m"), registry="registry",
                                    runs_dir="runs", datasets_dir="corrections"), prefix="/inspect")

    GET  /                 the inspector page          GET /runs   the runs page
    GET  /api/state        model, adapters (loaded and available), datasets, limits
    POST /api/field        per-token log-probs, surprisal, difference, KL/JS    (field.token_field)
    POST /api/position     top-k of base / each adapter / mix at one position   (field.position_detail)
    POST /api/generate     base vs adapter(s) [vs logit-biased] from one seed   (field.side_by_side)
    POST /api/corrections  save a correction into a dataset folder              (corrections.save)
    POST /api/adapters     load an adapter found in the registry or runs folder
    GET  /api/runs         studies and runs under the runs folder               (runs.scan)
    GET  /api/runs/file/P  a report or plot inside the runs folder

Bad input answers 4xx with {"detail": "<one line>"}: 400 for a value out of range or an
unknown adapter, 413 for a prompt over the size limit, 404 for a missing file.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

from fastapi import APIRouter, Body, HTTPException
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ...adapters import AdapterError, resolve_folder
from ...errors import UserError
from . import corrections as corr
from . import field as fld
from . import runs as runsmod

STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"inspect.js": "text/javascript", "inspect.css": "text/css", "runs.js": "text/javascript"}


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str
    chat: bool = True
    adapters: dict[str, float] = Field(default_factory=dict)


class FieldReq(_Req):
    continuation: str = ""
    seed: int = 0
    max_new_tokens: int = 48


class PositionReq(_Req):
    continuation: str
    position: int
    k: int = 10
    bias_dataset: str | None = None
    bias_strength: float = 5.0


class GenerateReq(_Req):
    seed: int = 0
    max_new_tokens: int = 48
    temperature: float = 0.0
    bias_dataset: str | None = None
    bias_strength: float = 5.0


class ContinueReq(_Req):
    prefix: str
    seed: int = 0
    max_new_tokens: int = 48
    temperature: float = 0.0


class DatasetReq(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    adapters: dict[str, float] = Field(default_factory=dict)
    limit: int = 100


class UndoReq(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: str


class CorrectionReq(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: str
    correction: dict[str, Any]


class AdapterReq(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    name: str | None = None


def _parse(model: type[BaseModel], body: Any) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "request"
        raise HTTPException(422, f"{where}: {first['msg']}") from None


def _user_errors(fn):
    """Run `fn()`, turning the user's mistakes into 4xx answers with one line."""
    try:
        return fn()
    except HTTPException:
        raise
    except (UserError, AdapterError) as e:
        raise HTTPException(413 if isinstance(e, fld.PromptTooLong) else 400, " ".join(str(e).split())) from None


def _as_loaded(base):
    if isinstance(base, str):
        from ... import models

        return models.load(base)
    return base


def build_router(base, adapters: Mapping[str, str | Path] | Sequence[str | Path] | None = None, *,
                 registry: str | Path | None = None, runs_dir: str | Path | None = None,
                 datasets_dir: str | Path | None = None, share: bool = False, lazy: bool = False) -> APIRouter:
    """The inspector as a FastAPI router (mount it with prefix "/inspect").

    base          a models.Loaded (copied, unless `share`) or a model spec
    adapters      {name: folder} or [folder] loaded at once
    registry      a folder of adapter folders (serve.registry), loaded by name on first use
    runs_dir      where studies and training runs live (the runs page; adapters found there load on demand)
    datasets_dir  where correction datasets are written (default: ./corrections)
    lazy          copy the base and load `adapters` on the first request (a server whose
                  /inspect is never opened pays nothing)
    """
    if adapters is not None and not isinstance(adapters, Mapping):
        adapters = {resolve_folder(p).parent.name if resolve_folder(p).name == "adapter" else Path(p).name: p
                    for p in adapters}
    made: dict[str, fld.Inspector] = {}
    making = threading.Lock()

    def inspector() -> fld.Inspector:
        with making:
            if "ins" not in made:
                made["ins"] = fld.Inspector.load(_as_loaded(base), dict(adapters or {}), share=share)
            return made["ins"]

    if not lazy:
        inspector()
    roots = [Path(x).expanduser().resolve() for x in (registry, runs_dir) if x]
    data_root = Path(datasets_dir or "corrections").expanduser()
    router = APIRouter()

    def available() -> dict[str, str]:
        ins = inspector()
        out: dict[str, str] = dict(ins.paths)  # loaded ones first, then the registry's
        if registry:
            from ..registry import Registry

            ok, _ = Registry(registry).scan()
            for n, e in ok.items():
                out.setdefault(fld.adapter_key(n), str(e.folder))
        return out

    def ensure(weights: Mapping[str, float]) -> dict[str, float]:
        ins = inspector()
        avail = available()
        for name in weights:
            if name not in ins.paths and name in avail:
                ins.add_adapter(name, avail[name])
        return fld.check_weights(ins, weights)

    def bias_of(dataset: str | None, strength: float) -> dict[int, float] | None:
        if not dataset:
            return None
        if not 0.0 <= strength <= 50.0:
            raise UserError(f"bias strength must be between 0 and 50, got {strength}")
        cs = [c.model_dump() for c in corr.load(data_root, dataset)]
        ins = inspector()
        return fld.bias_from_corrections(ins.tokenizer, cs, strength)

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @router.get("/runs", response_class=HTMLResponse, include_in_schema=False)
    def runs_page() -> HTMLResponse:
        return HTMLResponse((STATIC / "runs.html").read_text(encoding="utf-8"))

    @router.get("/static/{name}", include_in_schema=False)
    def static(name: str):
        if name not in STATIC_FILES:
            raise HTTPException(404, f"no static file {name!r}")
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name])

    @router.get("/api/state")
    def state() -> dict:
        ins = _user_errors(inspector)
        return {"model": getattr(ins.base, "spec", "?"), "fingerprint": getattr(ins.base, "fingerprint", None),
                "loaded": ins.names, "adapters": available(),
                "runs": bool(runs_dir), "datasets_dir": str(data_root),
                "datasets": corr.list_datasets(data_root),
                "limits": {"max_strength": fld.MAX_STRENGTH, "max_prompt_chars": fld.MAX_PROMPT_CHARS,
                           "max_top_k": fld.MAX_TOP_K, "max_tokens": fld.MAX_CONTINUATION_TOKENS}}

    @router.post("/api/field")
    def field(body: Any = Body(...)) -> dict:
        r = _parse(FieldReq, body)

        def run():
            ins = inspector()
            fld.check_prompt(r.prompt)
            w = ensure(r.adapters)
            text = r.continuation
            if not text:
                text = fld.continuation_for(ins, r.prompt, w, chat=r.chat, seed=r.seed,
                                            max_new_tokens=min(max(r.max_new_tokens, 1), fld.MAX_CONTINUATION_TOKENS))
                if not text:
                    raise UserError("the model generated nothing for this prompt: paste a continuation")
            out = fld.token_field(ins, r.prompt, text, w, chat=r.chat)
            fld.prefetch_sides(ins, r.prompt, text, w, chat=r.chat)  # a click's other sides, while the user reads
            return {**out, "continuation": text, "generated": not r.continuation}

        return _user_errors(run)

    @router.post("/api/position")
    def position(body: Any = Body(...)) -> dict:
        r = _parse(PositionReq, body)
        return _user_errors(lambda: fld.position_detail(
            inspector(), r.prompt, r.continuation, ensure(r.adapters), r.position, chat=r.chat, k=r.k,
            bias=bias_of(r.bias_dataset, r.bias_strength)))

    @router.post("/api/generate")
    def generate(body: Any = Body(...)) -> dict:
        r = _parse(GenerateReq, body)
        return _user_errors(lambda: fld.side_by_side(
            inspector(), r.prompt, ensure(r.adapters), chat=r.chat, seed=r.seed, max_new_tokens=r.max_new_tokens,
            temperature=r.temperature, bias=bias_of(r.bias_dataset, r.bias_strength)))

    @router.post("/api/continue")
    def continue_(body: Any = Body(...)) -> dict:
        r = _parse(ContinueReq, body)
        return _user_errors(lambda: fld.continue_from(
            inspector(), r.prompt, r.prefix, ensure(r.adapters), chat=r.chat, seed=r.seed,
            max_new_tokens=r.max_new_tokens, temperature=r.temperature))

    @router.post("/api/corrections")
    def correction(body: Any = Body(...)) -> dict:
        r = _parse(CorrectionReq, body)
        return _user_errors(lambda: corr.save(data_root, r.dataset, corr.parse(r.correction)))

    @router.get("/api/corrections/{name}")
    def correction_list(name: str) -> dict:
        return _user_errors(lambda: corr.listing(data_root, name))

    @router.post("/api/dataset")
    def dataset(body: Any = Body(...)) -> dict:
        r = _parse(DatasetReq, body)

        def run():
            from ...data.records import RECORDS_FILE, read_records

            p = Path(r.path).expanduser()
            allowed = roots + [data_root.resolve()]
            cands = [p] if p.is_absolute() else [root / p for root in allowed]
            for c in cands:
                c = c.resolve()
                if any(c == root or root in c.parents for root in allowed) and (c / RECORDS_FILE).is_file():
                    recs = list(read_records(c / RECORDS_FILE, skip_invalid=True))
                    return {**fld.dataset_view(inspector(), recs, ensure(r.adapters), limit=r.limit), "path": str(c)}
            raise UserError(f"{r.path}: no records folder (records.jsonl) inside the runs, registry or datasets folders")

        return _user_errors(run)

    @router.post("/api/corrections/undo")
    def correction_undo(body: Any = Body(...)) -> dict:
        r = _parse(UndoReq, body)
        return _user_errors(lambda: corr.undo(data_root, r.dataset))

    @router.post("/api/adapters")
    def load_adapter(body: Any = Body(...)) -> dict:
        r = _parse(AdapterReq, body)

        def run():
            ins = inspector()
            p = Path(r.path).expanduser()
            cands = [p] if p.is_absolute() else [root / p for root in roots]
            for c in cands:
                c = c.resolve()
                if any(c == root or root in c.parents for root in roots) and c.is_dir():
                    folder = resolve_folder(c)
                    root = next(x for x in roots if x == c or x in c.parents)
                    parts = [x for x in folder.resolve().relative_to(root).parts if x not in ("runs", "train", "adapter")]
                    run = next((a for a in [folder, *folder.parents] if (a / "config.json").is_file()
                                and root in a.parents), None)  # a run folder: named by its labels
                    name = r.name or (runsmod.run_name(run, root) if run else None) or "-".join(
                        x[:12] for x in parts) or root.name
                    name = ins.add_adapter(fld.adapter_key(name), folder)
                    return {"name": name, "path": str(folder), "loaded": ins.names}
            raise UserError(f"{r.path}: adapters load only from inside the registry or the runs folder")

        return _user_errors(run)

    @router.get("/api/runs")
    def runs() -> dict:
        if not runs_dir:
            raise HTTPException(404, "no runs folder was given to the server")
        return _user_errors(lambda: runsmod.scan(runs_dir))

    @router.get("/api/runs/file/{rel:path}", include_in_schema=False)
    def run_file(rel: str):
        if not runs_dir:
            raise HTTPException(404, "no runs folder was given to the server")
        try:
            p = runsmod.resolve_inside(runs_dir, rel)
        except UserError as e:
            raise HTTPException(404, str(e)) from None
        if p.suffix.lower() not in (".html", ".png", ".svg", ".csv", ".json", ".jsonl"):
            raise HTTPException(404, f"{rel}: not a report, plot or metrics file")
        return FileResponse(p)

    return router
