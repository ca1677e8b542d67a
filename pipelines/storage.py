"""Filesystem-URI helpers: local paths and any pyarrow filesystem (s3://, gs://, hdfs://)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from pipelines.errors import ArtifactError, DataError


def cache_dir() -> Path:
    """Downloads and generated data: $LLMREC_CACHE_DIR, else $XDG_CACHE_HOME/llmrec."""
    root = os.environ.get("LLMREC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "llmrec"
    )
    return Path(root)


def resolve(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a URI; relative local paths become absolute."""
    uri = os.fspath(uri)
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    try:
        return pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as e:  # ArrowInvalid is a ValueError: unknown scheme, bad URI
        raise DataError(f"cannot open '{uri}': {e}") from e


def info(fs: pafs.FileSystem, path: str) -> pafs.FileInfo:
    return fs.get_file_info(path)


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return info(fs, path).type != pafs.FileType.NotFound


def is_dir(fs: pafs.FileSystem, path: str) -> bool:
    return info(fs, path).type == pafs.FileType.Directory


def list_files(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    if not is_dir(fs, path):
        return []
    sel = pafs.FileSelector(path, recursive=False)
    return sorted(fs.get_file_info(sel), key=lambda i: i.path)


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as f:
        f.write(data)


def write_json(fs: pafs.FileSystem, path: str, obj: Any) -> None:
    write_bytes(fs, path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(fs: pafs.FileSystem, path: str) -> Any:
    return json.loads(read_bytes(fs, path))


def sha256_file(fs: pafs.FileSystem, path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint_files(fs: pafs.FileSystem, paths: list[str], full_limit: int = 64 << 20) -> str:
    """A content fingerprint: full hashes for small files, size + head + tail for large ones."""
    h = hashlib.sha256()
    for p in sorted(paths):
        i = info(fs, p)
        h.update(os.path.basename(p).encode())
        h.update(str(i.size).encode())
        with fs.open_input_file(p) as f:
            if i.size is not None and i.size > full_limit:
                h.update(f.read(4 << 20))
                f.seek(i.size - (4 << 20))
                h.update(f.read(4 << 20))
            else:
                while block := f.read(1 << 22):
                    h.update(block)
    return h.hexdigest()


def save_npz(fs: pafs.FileSystem, path: str, **arrays: Any) -> None:
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes(fs, path, buf.getvalue())


def load_npz(fs: pafs.FileSystem, path: str) -> dict[str, Any]:
    import numpy as np

    with np.load(io.BytesIO(read_bytes(fs, path)), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def temp_sibling(path: str, tag: str) -> str:
    parent, name = os.path.split(path.rstrip("/"))
    return f"{parent}/.{name}.{tag}-{uuid.uuid4().hex[:8]}"


def publish_dir(fs: pafs.FileSystem, tmp: str, final: str) -> None:
    """Replace `final` by the finished folder `tmp`; the old one is removed only afterwards."""
    old = None
    if exists(fs, final):
        old = temp_sibling(final, "old")
        fs.move(final, old)
    try:
        fs.move(tmp, final)
    except Exception as e:
        if old is not None:
            fs.move(old, final)
        raise ArtifactError(f"could not publish '{final}': {e}") from e
    if old is not None:
        fs.delete_dir(old)
