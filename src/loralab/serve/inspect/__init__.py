"""The inspector: see how adapters bend the token probability field, and correct it.

`build_router(...)` gives the FastAPI router that `loralab serve` mounts at /inspect; the
page (static/) is a thin view over the pure functions of `field` (numbers from the
log-prob engine), `corrections` (a records folder `loralab train` reads) and `runs`.

    python -m loralab.serve.inspect --model smollm2-135m --adapter runs/sport/adapter --runs runs
"""

from .api import build_router

__all__ = ["build_router"]
