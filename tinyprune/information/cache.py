"""An on-disk cache for analyses of a model on data: activations, MI scores, covariances.

A result is stored as ``<kind>-<key>.npz`` (flat ``name -> array``, no pickles), where the key
hashes the model (structure and every state_dict byte), the data arrays and the settings. A
second ``compress`` of the same model on the same data at another sparsity, a ``--fit`` trial or
an ``analyze`` run load the file instead of measuring again; a changed weight, sample or option
gives a new key. The cache location is ``--cache-dir`` (default: $TINYPRUNE_CACHE, else
$XDG_CACHE_HOME/tinyprune or ~/.cache/tinyprune); ``--no-cache`` turns it off.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

# Bump when what any analysis stores changes, so old cache files stop matching.
CACHE_VERSION = 2
# Files kept; beyond this the least recently used go (a run re-measures every 10 % of channels
# removed, so one compress leaves a few dozen small files).
MAX_FILES = 400


def default_cache_dir() -> Path:
    if os.environ.get("TINYPRUNE_CACHE"):
        return Path(os.environ["TINYPRUNE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tinyprune"


def _hash_tensor(h, name: str, t) -> None:
    import torch

    t = t.detach().to("cpu").contiguous() if isinstance(t, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(t))
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def analysis_key(kind: str, model, arrays: dict, settings: dict) -> str:
    """Hex SHA-256 of the model, the data arrays and the settings of one analysis."""
    h = hashlib.sha256(f"tinyprune-{kind}-v{CACHE_VERSION}|{sorted(settings.items())!r}|".encode())
    h.update(repr(model).encode())
    for name, m in model.named_modules():  # a lifted graph's code, not only its modules' reprs
        h.update(f"{name}|{type(m).__module__}.{type(m).__qualname__}|{getattr(m, 'code', '')}|".encode())
    for name, t in model.state_dict().items():
        _hash_tensor(h, name, t)
    for name, t in model.named_buffers():  # non-persistent buffers too
        _hash_tensor(h, f"buffer:{name}", t)
    for name, a in arrays.items():
        _hash_tensor(h, f"data:{name}", a)
    return h.hexdigest()


def cached(kind: str, model, arrays: dict, settings: dict,
           compute: Callable[[], dict[str, np.ndarray]], cache_dir) -> dict[str, np.ndarray]:
    """``compute()`` (a flat dict of arrays), or its stored copy for the same model, data and
    settings. ``cache_dir`` None computes without storing."""
    if cache_dir is None:
        return compute()
    cache = Path(cache_dir)
    path = cache / f"{kind}-{analysis_key(kind, model, arrays, settings)[:40]}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = {name: z[name].copy() for name in z.files}
        try:
            os.utime(path)  # recently used: kept longest
        except OSError:
            pass  # a read-only cache still serves its files
        return stored
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass  # absent, or unreadable (cut short by a full disk): measure again and overwrite
    result = compute()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a concurrent reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=cache, suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **result)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _trim(cache)
    except OSError:
        pass  # a read-only or full cache location costs the reuse, never the run
    return result


def _trim(cache: Path) -> None:
    # only files this cache wrote (<kind>-<40 hex digits>.npz): never a user's own files
    files = sorted((f for f in cache.glob("*-" + "[0-9a-f]" * 40 + ".npz")), key=lambda f: f.stat().st_mtime)
    for f in files[:max(0, len(files) - MAX_FILES)]:
        f.unlink(missing_ok=True)
