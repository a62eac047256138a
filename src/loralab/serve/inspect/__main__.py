"""The inspector alone, on its own small server (`loralab serve` mounts the same router).

    python -m loralab.serve.inspect --model smollm2-135m --adapter sport=runs/sport/adapter \\
        --runs runs --datasets corrections --port 8765
    # then open http://127.0.0.1:8765/inspect/
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loralab.serve.inspect", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="base model spec")
    ap.add_argument("--adapter", action="append", default=[], help="NAME=FOLDER or FOLDER (repeatable)")
    ap.add_argument("--registry", help="folder of adapter folders")
    ap.add_argument("--runs", help="runs folder (studies and training runs)")
    ap.add_argument("--datasets", default="corrections", help="where correction datasets are written")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765)
    a = ap.parse_args(argv)

    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import RedirectResponse

    from ... import models
    from ...errors import UserError
    from . import build_router

    adapters = {}
    for spec in a.adapter:
        name, _, path = spec.rpartition("=")
        from pathlib import Path

        adapters[name or Path(path).name] = path
    try:
        base = models.load(a.model, device=a.device, dtype=a.dtype)
        router = build_router(base, adapters, registry=a.registry, runs_dir=a.runs, datasets_dir=a.datasets,
                              share=True)
    except (UserError, ValueError, OSError, models.ModelError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    app = FastAPI(title="loralab inspector")
    app.include_router(router, prefix="/inspect")
    app.add_api_route("/", lambda: RedirectResponse("/inspect/"), include_in_schema=False)
    print(f"inspector on http://{a.host}:{a.port}/inspect/", flush=True)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
