"""The `loralab` command line: parse, call one stage function, print.

One module per verb group beside this file (data, score, train, eval, study, ...); each
registers its commands on the shared apps of `app.py` when imported. They are found by
listing this package, so adding a verb group touches no other file, and no verb module
imports another.
"""

from __future__ import annotations

import importlib
import pkgutil

from .app import app, data_app, err, fail, out  # noqa: F401

for _m in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _m not in ("app", "__main__"):
        importlib.import_module(f"{__name__}.{_m}")


def main() -> None:
    app(prog_name="loralab")
