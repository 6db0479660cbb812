"""Cheap, torch-free fingerprints of models, for cache keys."""

from __future__ import annotations

import hashlib
from pathlib import Path


def fingerprint(name_or_path: str) -> str:
    """A hash that changes when a local model's files change.

    For a local directory: every file's name, size and modification time, and config.json's
    content. For a single file (a .gguf model): its path, size and modification time. For a
    hub id: the id itself (the hub's revision is not known without a call).
    """
    digest = hashlib.sha256()
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        digest.update(str(path.resolve()).encode())
        for file in sorted(path.iterdir()):
            if file.is_file():
                stat = file.stat()
                digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        config = path / "config.json"
        if config.is_file():
            digest.update(config.read_bytes())
    elif path.is_file():
        stat = path.stat()
        digest.update(f"file:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    else:
        digest.update(f"hub:{name_or_path}".encode())
    return digest.hexdigest()[:24]
