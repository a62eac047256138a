"""The adapter registry: a folder of adapter folders, as `loralab train` writes them.

    registry/
      sport/            an adapter folder (adapter_config.json, adapter_model.safetensors,
                        loralab.json) or a run folder holding one under adapter/
      medical/
      .sport.x1y2.tmp   a folder being added (hidden): never served

An adapter is served under its folder's name. Only safetensors weights are read, and only
from inside the registry: a folder or file that resolves outside it (a symlink out, `..`),
or any pickle file (*.bin, *.pt, *.pth, *.pkl, *.ckpt), refuses the whole adapter with a
reason. A folder whose weights are incomplete (a half-finished copy) fails the safetensors
header check and is refused too, so it is never served. `add` copies a folder in under a
hidden temp name and renames it into place; `remove` renames it away before deleting.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..adapters import CARD, resolve_folder
from ..errors import UserError
from ..io import atomic_dir

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
BASE_NAME = "__base__"


class RegistryError(UserError):
    """An adapter that cannot be registered or served; the message says why."""


@dataclass
class Entry:
    """One adapter folder of the registry, with its card's fields."""

    name: str
    folder: Path  # the adapter folder itself (resolved, inside the registry)
    domain: str | None = None
    role: str | None = None
    trigger: str | None = None
    keywords: list[str] = field(default_factory=list)
    card: dict[str, Any] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "domain": self.domain, "role": self.role, "trigger": self.trigger,
                "keywords": self.keywords, "path": str(self.folder)}


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
        return True
    except ValueError:
        return False


def safetensors_complete(path: Path) -> str | None:
    """None when the file's header parses and its data is all there; else the reason."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                return "truncated safetensors file (no header)"
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, 100 << 20):
                return "truncated safetensors file (header longer than the file)"
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as e:
        return f"unreadable safetensors file ({e})"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        return f"incomplete safetensors file ({size} bytes, header says {8 + n + end})"
    return None


def check_folder(folder: Path, root: Path) -> list[str]:
    """Every reason `folder` (an entry of the registry at `root`) cannot be served."""
    problems = []
    if not _inside(folder, root):
        return [f"resolves outside the registry ({folder.resolve()})"]
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder)
        if f.is_symlink() and not _inside(f, root):
            problems.append(f"{rel}: links outside the registry")
        elif f.suffix.lower() in PICKLE_SUFFIXES:
            problems.append(f"{rel}: pickle files are never loaded (safetensors only)")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (folder / name).is_file():
            problems.append(f"missing {name}")
    if not problems:
        why = safetensors_complete(folder / "adapter_model.safetensors")
        if why:
            problems.append(why)
    return problems


def _entry(name: str, folder: Path) -> Entry:
    card = {}
    if (folder / CARD).is_file():
        try:
            card = json.loads((folder / CARD).read_text())
        except ValueError:
            card = {}
    kw = card.get("keywords") or []
    return Entry(name=name, folder=folder, domain=card.get("domain"), role=card.get("role"),
                 trigger=card.get("trigger"), keywords=[str(k) for k in kw] if isinstance(kw, list) else [],
                 card=card)


class Registry:
    """The adapters under one folder; `scan()` re-reads it (cheap: no weights are read)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise RegistryError(f"registry {self.root} is not a folder")

    def scan(self) -> tuple[dict[str, Entry], dict[str, list[str]]]:
        """({name: servable entry}, {name: reasons it is refused}); hidden folders are skipped."""
        ok: dict[str, Entry] = {}
        bad: dict[str, list[str]] = {}
        for d in sorted(self.root.iterdir()):
            if d.name.startswith(".") or not (d.is_dir() or d.is_symlink()):
                continue
            if not NAME_RE.fullmatch(d.name) or d.name == BASE_NAME:
                bad[d.name] = ["not a valid adapter name (letters, digits, . _ -)"]
                continue
            if not _inside(d, self.root):
                bad[d.name] = [f"resolves outside the registry ({d.resolve()})"]
                continue
            folder = resolve_folder(d)
            problems = check_folder(folder, self.root)
            if problems:
                bad[d.name] = problems
            else:
                ok[d.name] = _entry(d.name, folder.resolve())
        return ok, bad

    def resolve(self, name: str, path: str | None = None) -> Entry:
        """The entry `name` (at `path`, a folder inside the registry, when given), checked."""
        if not NAME_RE.fullmatch(name or "") or name == BASE_NAME:
            raise RegistryError(f"invalid adapter name {name!r} (letters, digits, . _ -)")
        p = Path(path).expanduser() if path else self.root / name
        if not p.is_absolute():
            p = self.root / p
        if not _inside(p, self.root):
            raise RegistryError(f"{name}: {path or p} resolves outside the registry (a link out of it counts); "
                                f"adapters are loaded only from inside the registry {self.root}")
        if not p.is_dir():
            raise RegistryError(f"{path or name}: no such adapter folder in the registry")
        folder = resolve_folder(p)
        problems = check_folder(folder, self.root)
        if problems:
            raise RegistryError(f"adapter {name!r} refused: " + "; ".join(problems))
        return _entry(name, folder.resolve())

    def add(self, name: str, source: str | Path) -> Entry:
        """Copy the adapter folder `source` into the registry as `name` (atomic; symlinks refused)."""
        src = resolve_folder(Path(source).expanduser())
        if not NAME_RE.fullmatch(name) or name == BASE_NAME:
            raise RegistryError(f"invalid adapter name {name!r} (letters, digits, . _ -)")
        if not src.is_dir():
            raise RegistryError(f"{source}: no such adapter folder")
        problems = [f"{f.relative_to(src)}: symbolic link" for f in src.rglob("*") if f.is_symlink()]
        problems += check_folder(src, src.resolve())
        if problems:
            raise RegistryError(f"adapter {source} refused: " + "; ".join(problems))
        with atomic_dir(self.root / name) as tmp:
            for f in src.iterdir():
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
        return self.resolve(name)

    def remove(self, name: str) -> None:
        """Take `name` out of the registry: renamed to a hidden folder first, then deleted."""
        d = self.root / name
        if not NAME_RE.fullmatch(name) or not d.exists():
            raise RegistryError(f"no adapter {name!r} in the registry")
        gone = self.root / f".{name}.removed.{os.getpid()}"
        os.replace(d, gone)
        shutil.rmtree(gone, ignore_errors=True)
