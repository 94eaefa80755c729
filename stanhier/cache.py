"""Where compiled models live, and how concurrent processes share them.

The cache directory is ``platformdirs.user_cache_dir("stanhier")`` unless the
environment variable ``STANHIER_CACHE_DIR`` names another one. Each compiled
program sits in ``<cache>/<backend>/<key>/`` where ``key`` hashes the program
text, the backend and its Stan version. A build happens under a file lock and is
marked complete by a ``COMPLETE`` file written last (temporary name, then
rename), so a partial entry left by a killed process is detected and rebuilt.

Example
-------
>>> from stanhier.cache import cache_dir, program_key
>>> len(program_key("model { }", "pystan", "2.35.0"))
20
"""

from __future__ import annotations

import hashlib
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import platformdirs
from filelock import FileLock

__all__ = ["cache_dir", "program_key", "entry_dir", "locked_entry", "is_complete", "mark_complete",
           "clear_entry"]

ENV_VAR = "STANHIER_CACHE_DIR"
_MARKER = "COMPLETE"


def cache_dir() -> Path:
    """The root of stanhier's cache (``$STANHIER_CACHE_DIR`` or the user cache directory)."""
    root = os.environ.get(ENV_VAR) or platformdirs.user_cache_dir("stanhier")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def program_key(code: str, backend: str, stan_version: str) -> str:
    """A short hash of program text + backend + Stan version."""
    h = hashlib.blake2b(digest_size=10)
    for part in (code, backend, stan_version):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def entry_dir(backend: str, key: str) -> Path:
    return cache_dir() / backend / key


def is_complete(entry: Path) -> bool:
    return (entry / _MARKER).is_file()


def mark_complete(entry: Path) -> None:
    tmp = entry / f".{_MARKER}.{os.getpid()}"
    tmp.write_text("ok\n")
    os.replace(tmp, entry / _MARKER)


def clear_entry(entry: Path) -> None:
    """Empty a (stale) entry so it is rebuilt; call it while holding the entry's lock."""
    shutil.rmtree(entry, ignore_errors=True)
    entry.mkdir(parents=True, exist_ok=True)


@contextmanager
def locked_entry(backend: str, key: str, timeout: float = 3600) -> Iterator[Path]:
    """Hold the entry's lock; an incomplete entry found under the lock is wiped first."""
    entry = entry_dir(backend, key)
    entry.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry) + ".lock", timeout=timeout):
        if entry.exists() and not is_complete(entry):
            shutil.rmtree(entry, ignore_errors=True)
        entry.mkdir(parents=True, exist_ok=True)
        yield entry
