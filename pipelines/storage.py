"""Filesystem-URI helpers: local paths and any pyarrow filesystem (s3://, gs://, hdfs://)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
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
    """Replace `final` by the finished folder `tmp`.

    On file systems with renames the old folder is removed only afterwards. Object stores
    (S3, GCS) cannot rename folders: there the old objects are deleted before the new ones
    are copied, so a reader may briefly see a missing or partial folder, never old and new
    files mixed. Model versions avoid even that: CURRENT names a version only after its
    upload finished."""
    if not isinstance(fs, pafs.LocalFileSystem):
        if exists(fs, final):
            fs.delete_dir(final)
        try:
            pafs.copy_files(tmp, final, source_filesystem=fs, destination_filesystem=fs)
        except Exception as e:
            raise ArtifactError(f"could not publish '{final}': {e}") from e
        fs.delete_dir(tmp)
        return
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


# -- folders at any URI: stage them locally for code that needs files (models, torch) -------


def local_path(uri: str | os.PathLike) -> str | None:
    """The local path behind `uri` (a path or file://), or None for a remote filesystem."""
    fs, path = resolve(uri)
    return path if isinstance(fs, pafs.LocalFileSystem) else None


def join(uri: str | os.PathLike, *parts: str) -> str:
    """Append path parts to a path or URI, keeping a URI's query string (?endpoint=...)."""
    uri = os.fspath(uri)
    base, sep, query = uri.partition("?")
    return "/".join([base.rstrip("/"), *parts]) + (sep + query if sep else "")


def download_dir(uri: str | os.PathLike, local: str | os.PathLike) -> Path:
    fs, path = resolve(uri)
    if not is_dir(fs, path):
        raise ArtifactError(f"'{uri}' is not a folder (missing, or not written yet)")
    Path(local).mkdir(parents=True, exist_ok=True)
    pafs.copy_files(
        path, os.fspath(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()
    )
    return Path(local)


def upload_dir(local: str | os.PathLike, uri: str | os.PathLike) -> None:
    """Copy a finished local folder to `uri`, replacing what was there."""
    fs, path = resolve(uri)
    local_fs = pafs.LocalFileSystem()
    if not isinstance(fs, pafs.LocalFileSystem):  # object stores: no renames, upload in place
        if exists(fs, path):
            fs.delete_dir(path)
        pafs.copy_files(
            os.fspath(local), path, source_filesystem=local_fs, destination_filesystem=fs
        )
        return
    tmp = temp_sibling(path, "upload")
    fs.create_dir(tmp, recursive=True)
    pafs.copy_files(os.fspath(local), tmp, source_filesystem=local_fs, destination_filesystem=fs)
    publish_dir(fs, tmp, path)


@contextlib.contextmanager
def staged_input(uri: str | os.PathLike) -> Iterator[Path]:
    """A local folder with the content of `uri`: the folder itself when it is local, a fresh
    temporary copy otherwise (inputs such as a re-ranker may be rewritten at the same URI)."""
    local = local_path(uri)
    if local is not None:
        yield Path(local)
        return
    with tempfile.TemporaryDirectory(prefix="llmrec-in-") as tmp:
        yield download_dir(uri, Path(tmp) / "dir")


@contextlib.contextmanager
def staged_output(uri: str | os.PathLike, merge: bool = False) -> Iterator[Path]:
    """A local folder to write into; uploaded to `uri` when the block succeeds, replacing
    the folder there (or, with `merge`, adding and overwriting files beside the others).
    Local targets are written in place (their writers already replace folders atomically)."""
    local = local_path(uri)
    if local is not None:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        yield Path(local)
        return
    with tempfile.TemporaryDirectory(prefix="llmrec-out-") as tmp:
        out = Path(tmp) / "dir"
        yield out
        if merge:
            fs, path = resolve(uri)
            fs.create_dir(path, recursive=True)
            pafs.copy_files(
                os.fspath(out),
                path,
                source_filesystem=pafs.LocalFileSystem(),
                destination_filesystem=fs,
            )
        else:
            upload_dir(out, uri)


def cached_copy(uri: str | os.PathLike) -> Path:
    """A local copy of an immutable folder (a published model version), downloaded once per
    machine into the cache; local folders are used where they are."""
    local = local_path(uri)
    if local is not None:
        return Path(local)
    target = cache_dir() / "remote" / hashlib.sha256(os.fspath(uri).encode()).hexdigest()[:20]
    if (target / ".complete").exists():
        return target
    tmp = target.with_name(f"{target.name}.{uuid.uuid4().hex[:8]}")
    download_dir(uri, tmp)
    (tmp / ".complete").write_text(os.fspath(uri))
    try:
        tmp.rename(target)
    except OSError:  # another replica on this machine finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return target
