"""Rebuildable cache entries on disk (the built fabric, the composed config): JSON, private to the user, written
atomically, and read only when the current user owns them and nobody else can write to them.

Everything here fails soft: a missing, torn, foreign or unwritable entry costs a rebuild, never an error.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger("cmtwin.cache")


def entry_path(kind: str, key: str, *, packages: Iterable[str] = (), files: Iterable[Path] = ()) -> Path | None:
    """Where the cache keeps an entry of `kind` (a folder of the cache) for `key`, keyed as well by Python's version,
    the installed `packages` (found, not imported: where each is and when it was installed) and the bytes of
    `files` (the code that makes the entry, the inputs it reads), so that a change to any of them reads another
    entry. None when caching is off (CMTWIN_CACHE_DIR="") or a file cannot be read."""
    import hashlib
    import importlib.util
    import sys

    from cmtwin.paths import cache_dir

    root = cache_dir()
    if root is None:
        return None
    h = hashlib.sha256(f"{sys.version}\n{key}\n".encode())
    try:
        for name in packages:
            found = importlib.util.find_spec(name)
            origin = Path(found.origin) if found is not None and found.origin else None
            h.update(f"{name} {origin} {origin.stat().st_mtime_ns if origin else None}\n".encode())
        for f in files:
            h.update(f"{f.resolve()}\0".encode())
            h.update(f.read_bytes())
    except OSError:
        return None
    return root / kind / f"{h.hexdigest()[:40]}.json"


def distrust(st: os.stat_result) -> str | None:
    """Why a cache file must not be used (None if it may): owned by another user, or writable by others."""
    getuid = getattr(os, "getuid", None)
    if getuid is None:  # no POSIX owners (Windows): the per-user cache folder is the protection
        return None
    uid = getuid()
    if st.st_uid != uid:
        return f"it is owned by uid {st.st_uid}, not by you (uid {uid})"
    if st.st_mode & 0o022:
        return f"it is writable by other users (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def read_json(path: Path, what: str) -> Any | None:
    """The JSON value stored at `path`, or None (missing, a symlink, unreadable, malformed, or not to be trusted:
    then a one-line warning naming `what` is rebuilt). Reading JSON cannot run code whatever the file holds."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None  # missing (the usual first run), a symlink, or unreadable
    try:
        why = distrust(os.fstat(fd))
        if why:
            log.warning("warning: ignoring the %s cache file %s: %s; rebuilding it (use a CMTWIN_CACHE_DIR of your "
                        "own)", what, path, why)
            return None
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return json.loads(fh.read())
    except (OSError, ValueError, RecursionError):
        return None
    finally:
        os.close(fd)


def write_text(path: Path, text: str) -> None:
    """Store `text` at `path` atomically (a concurrent reader sees the old entry or the whole new one), readable
    and writable by the current user only. A read-only or full cache folder only costs the rebuild next time."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError:
        pass
