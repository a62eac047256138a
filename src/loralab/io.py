"""Atomic writes and streaming JSONL, shared by every stage.

Every artifact loralab writes goes through here: write to a temporary file in
the same folder, fsync, then rename, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from .errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temp file beside `path`; on clean exit fsync and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts are as readable as any file
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, sort_keys=False, default=str)
        f.write("\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Stream rows to `path` atomically; returns the number written (constant memory)."""
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str))
            f.write("\n")
            n += 1
    return n


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    """Stream rows of a JSONL file written by loralab (trusted input; one object per line)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def read_user_jsonl(path: str | Path, fields: Sequence[str]) -> list[dict]:
    """Rows of a JSONL file a user wrote, each an object whose `fields` are non-empty strings; the
    first line that is not is a UserError naming the file, the line and what is wrong."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except ValueError as e:
                raise UserError(f"{path}:{i}: not JSON ({e})") from None
            bad = [k for k in fields if not isinstance(r, dict) or not isinstance(r.get(k), str) or not r[k].strip()]
            if bad:
                raise UserError(f"{path}:{i}: {', '.join(bad)} missing or not a non-empty string")
            rows.append(r)
    return rows


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Build a folder under a temp name beside `path`, then rename it into place.

    Yields the temp folder. If `path` exists it is replaced only after the new
    folder is complete, so the folder appears whole or not at all. The folder's lock
    (`output_lock`) is held meanwhile: a second writer is refused, not interleaved.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(path):  # one writer per folder (see claim_output)
        # temp folders of a writer that died (kill -9, power loss): the lock says none is alive
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        try:
            yield tmp
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
            _fsync_dir(path.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


# ------------------------------------------------------------ output ownership

class OutputBusy(UserError):
    """Another live process holds the output's lock."""


LOCK_SUFFIX = ".lock"
_held: dict[Path, int] = {}  # lock file -> nesting depth in this process


def lock_path(path: str | Path) -> Path:
    """The lock file of output `path`: `.NAME.lock` beside it (a folder is renamed into place)."""
    p = Path(path).absolute()
    return p.with_name(f".{p.name}{LOCK_SUFFIX}")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _lock_owner(lock: Path) -> int | None:
    try:
        return int(lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def output_lock(path: str | Path, wait: float = 0.0) -> Iterator[Path]:
    """Hold the lock of output `path` (a folder or file) while the block runs.

    The lock is a file `.NAME.lock` beside `path` holding the writer's PID, created
    exclusively. A second writer gets an OutputBusy error naming the PID (after waiting up
    to `wait` seconds for it, as a shared cache's builders do); a lock left by a process that
    no longer runs is taken over. Re-entrant within one process.
    """
    lock = lock_path(path)
    if lock in _held:
        _held[lock] += 1
        try:
            yield lock
        finally:
            _held[lock] -= 1
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid = _lock_owner(lock)
            while pid is not None and pid != os.getpid() and _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
                pid = _lock_owner(lock) if lock.exists() else None
            if pid is not None and pid != os.getpid() and _pid_alive(pid):
                raise OutputBusy(f"{path} is being written by another loralab process (PID {pid}); wait for it "
                                 f"to finish (lock file {lock})") from None
            with contextlib.suppress(FileNotFoundError):  # stale: its writer is gone
                os.unlink(lock)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        break
    else:
        raise UserError(f"cannot take the lock {lock} of {path}")
    _held[lock] = 1
    try:
        yield lock
    finally:
        del _held[lock]
        if _lock_owner(lock) == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)


def _missing_ancestors(p: Path) -> list[Path]:
    out = []
    while not p.exists() and p != p.parent:
        out.append(p)
        p = p.parent
    return out


@contextlib.contextmanager
def claim_output(path: str | Path, *, overwrite: bool = False, resume: bool = False, clear: bool = False,
                 keep_on_error: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Own output `path` (a folder or file) for the block: locked, never silently replaced.

    An existing `path` is refused unless `overwrite` (the writer inside the block replaces
    it, e.g. through `atomic_dir`; with `clear` it is removed here first, under the lock)
    or `resume` (the verb continues what is there). If the block fails, what this call
    found missing (the output and any parent folders it needed) is removed again, unless
    `keep_on_error(path)` says it holds something to resume: a failed run leaves nothing
    that blocks the next one.
    """
    p = Path(path)
    created = _missing_ancestors(p.absolute())
    empty = p.is_dir() and not p.is_symlink() and not any(p.iterdir())
    if empty:  # an empty folder is as good as none, and is cleaned up like one
        created = [p.absolute()]
    if p.exists() and not empty and not (overwrite or resume):
        hint = " or --resume to continue it" if keep_on_error else ""
        raise UserError(f"{path} already exists; pass --overwrite to replace it{hint}, or choose another output")
    ok = False
    try:
        with output_lock(p):
            if p.exists() and overwrite and clear and not resume:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
            try:
                yield p
                ok = True
            finally:
                if not ok and created and p.exists() and not (keep_on_error and keep_on_error(p)):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    finally:
        if created and not p.exists():  # leave no empty parent folders behind either
            for d in created[1:]:
                with contextlib.suppress(OSError):
                    d.rmdir()
