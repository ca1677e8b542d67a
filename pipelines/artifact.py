"""The dataset artifact: folder layout, manifest, atomic write and validated load.

This is the one definition of the contract between `pipelines` and everything downstream.

    <folder>/
      manifest.json              DatasetManifest (schema version, counts, params, hashes)
      interactions.parquet       user_idx, item_idx, timestamp, value, split; sorted by
                                 (user_idx, timestamp, item_idx): the per-user sequences
      items.parquet              item_idx, item_id, title, description, categories, text, ...
      users.parquet              user_idx, user_id, attribute columns of the source
      popularity.parquet         item_idx, count, recent_count, first_seen, last_seen (train)
      matrix_train.npz           CSR user x item of the train split (indptr, indices, data, shape)
      matrix_train_val.npz       the same for train + validation (refit before testing)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from pipelines import __version__
from pipelines.errors import ArtifactError
from pipelines.global_steps import Csr, user_offsets
from pipelines.schema import INTERACTIONS_SCHEMA, ITEM_IDX, SCHEMA_VERSION, SPLIT, TIE_BREAK
from pipelines.storage import (
    exists,
    is_dir,
    list_files,
    load_npz,
    publish_dir,
    read_json,
    resolve,
    save_npz,
    sha256_file,
    temp_sibling,
    write_json,
)

KIND = "llmrec.dataset"
MANIFEST = "manifest.json"
FILES = {
    "interactions": "interactions.parquet",
    "items": "items.parquet",
    "users": "users.parquet",
    "popularity": "popularity.parquet",
    "matrix_train": "matrix_train.npz",
    "matrix_train_val": "matrix_train_val.npz",
}


class SourceInfo(BaseModel):
    kind: str
    location: str
    fingerprint: str


class Counts(BaseModel):
    rows: dict[str, int] = Field(description="rows after each step: raw ... kcore")
    dropped: dict[str, int] = Field(description="rows dropped, by reason")
    users: dict[str, int] = Field(description="distinct users after cleaning and after k-core")
    items: dict[str, int] = Field(description="distinct items after cleaning and after k-core")
    splits: dict[str, int] = Field(description="interactions per split")
    kcore_rounds: int


class DatasetManifest(BaseModel):
    kind: Literal["llmrec.dataset"] = KIND
    schema_version: int = SCHEMA_VERSION
    name: str
    version: str = Field(description="content id: hash of the source fingerprint and params")
    created_at: datetime
    llmrec_version: str = __version__
    engine: Literal["ray", "local"]
    source: SourceInfo
    params: dict[str, Any]
    counts: Counts
    split_protocol: str
    tie_break: str = TIE_BREAK
    n_users: int
    n_items: int
    files: dict[str, str] = Field(description="file name -> sha256")
    identity: str | None = Field(
        None,
        description="check value of the pseudonym key user ids were replaced with (None: "
        "the source's own ids)",
    )
    live: dict[str, Any] | None = Field(
        None,
        description="a merge of live events: the store, its sequence mark, events, items and "
        "erasures read (see pipelines.sources.live)",
    )


def dataset_version(fingerprint: str, params: dict[str, Any]) -> str:
    blob = json.dumps({"source": fingerprint, "params": params}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class PreparedData:
    """Everything the artifact holds, in memory, before it is written."""

    name: str
    engine: Literal["ray", "local"]
    source: SourceInfo
    params: dict[str, Any]
    counts: Counts
    interactions: pa.Table
    items: pa.Table
    users: pa.Table
    popularity: pa.Table
    matrix_train: Csr
    matrix_train_val: Csr
    identity: str | None = None
    live: dict[str, Any] | None = None

    @property
    def n_users(self) -> int:
        return self.users.num_rows

    @property
    def n_items(self) -> int:
        return self.items.num_rows


def _check_target(fs, path: str, version_source: SourceInfo, name: str, overwrite: bool) -> None:
    if not exists(fs, path):
        return
    if not is_dir(fs, path):
        raise ArtifactError(f"output '{path}' exists and is not a folder; choose another --out")
    if not list_files(fs, path):
        return
    if not exists(fs, f"{path}/{MANIFEST}"):
        raise ArtifactError(
            f"output folder '{path}' is not empty and holds no llmrec dataset; choose another --out"
        )
    old = read_json(fs, f"{path}/{MANIFEST}")
    same = old.get("name") == name and old.get("source", {}).get("fingerprint") == (
        version_source.fingerprint
    )
    if not same and not overwrite:
        raise ArtifactError(
            f"output folder '{path}' already holds a different dataset ('{old.get('name')}', "
            f"version {old.get('version')}); choose another --out or pass --overwrite"
        )


def write_dataset(data: PreparedData, out: str, overwrite: bool = False) -> DatasetManifest:
    """Write to a temporary sibling folder, then swap it in: never a half-written artifact."""
    fs, path = resolve(out)
    _check_target(fs, path, data.source, data.name, overwrite)
    parent = path.rstrip("/").rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = temp_sibling(path, "tmp")
    fs.create_dir(tmp, recursive=True)
    try:
        interactions = data.interactions.cast(INTERACTIONS_SCHEMA)
        pq.write_table(
            interactions, f"{tmp}/{FILES['interactions']}", filesystem=fs, row_group_size=1 << 20
        )
        for key in ("items", "users", "popularity"):
            pq.write_table(getattr(data, key), f"{tmp}/{FILES[key]}", filesystem=fs)
        for key in ("matrix_train", "matrix_train_val"):
            m: Csr = getattr(data, key)
            save_npz(
                fs,
                f"{tmp}/{FILES[key]}",
                indptr=m.indptr,
                indices=m.indices,
                data=m.data,
                shape=np.asarray(m.shape, dtype=np.int64),
            )
        manifest = DatasetManifest(
            name=data.name,
            version=dataset_version(data.source.fingerprint, data.params),
            created_at=datetime.now(UTC),
            engine=data.engine,
            source=data.source,
            params=data.params,
            counts=data.counts,
            split_protocol=data.params.get("split", "leave_one_out"),
            n_users=data.n_users,
            n_items=data.n_items,
            identity=data.identity,
            live=data.live,
            files={name: sha256_file(fs, f"{tmp}/{name}") for name in FILES.values()},
        )
        write_json(fs, f"{tmp}/{MANIFEST}", manifest.model_dump(mode="json"))
        publish_dir(fs, tmp, path)
    except BaseException:
        if exists(fs, tmp):
            fs.delete_dir(tmp)
        raise
    return manifest


@dataclass(frozen=True)
class Sequences:
    """Per-user chronological item sequences: user u's rows are indptr[u]:indptr[u+1]."""

    indptr: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    splits: np.ndarray

    def of(self, user: int) -> np.ndarray:
        return self.items[self.indptr[user] : self.indptr[user + 1]]


class Dataset:
    """A loaded, validated dataset artifact. Tables are read lazily."""

    def __init__(self, uri: str, manifest: DatasetManifest):
        self.uri = uri
        self.manifest = manifest
        self._fs, self._path = resolve(uri)

    def _read(self, key: str) -> pa.Table:
        return pq.read_table(f"{self._path}/{FILES[key]}", filesystem=self._fs)

    @cached_property
    def interactions(self) -> pa.Table:
        return self._read("interactions")

    @cached_property
    def items(self) -> pa.Table:
        return self._read("items")

    @cached_property
    def users(self) -> pa.Table:
        return self._read("users")

    @cached_property
    def popularity(self) -> pa.Table:
        return self._read("popularity")

    def matrix(self, which: Literal["train", "train_val"] = "train") -> Csr:
        z = load_npz(self._fs, f"{self._path}/{FILES['matrix_' + which]}")
        return Csr(z["indptr"], z["indices"], z["data"], (int(z["shape"][0]), int(z["shape"][1])))

    @cached_property
    def sequences(self) -> Sequences:
        t = self.interactions
        users = t["user_idx"].to_numpy()
        return Sequences(
            indptr=user_offsets(users, self.manifest.n_users),
            items=t[ITEM_IDX].to_numpy(),
            timestamps=t["timestamp"].to_numpy(),
            splits=t[SPLIT].to_numpy(),
        )


def load_dataset(uri: str, expected_name: str | None = None, verify: bool = False) -> Dataset:
    """Open an artifact, refusing anything that is not a dataset of this schema version."""
    fs, path = resolve(uri)
    if not exists(fs, f"{path}/{MANIFEST}"):
        raise ArtifactError(
            f"no dataset at '{uri}' ({MANIFEST} missing); run `llmrec prepare --out {uri}` first"
        )
    raw = read_json(fs, f"{path}/{MANIFEST}")
    if raw.get("kind") != KIND:
        raise ArtifactError(f"'{uri}' holds a '{raw.get('kind')}', not a {KIND}")
    if raw.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(
            f"dataset '{uri}' has schema version {raw.get('schema_version')}, this llmrec reads "
            f"version {SCHEMA_VERSION}; re-run `llmrec prepare` to rebuild it"
        )
    manifest = DatasetManifest.model_validate(raw)
    if expected_name is not None and manifest.name != expected_name:
        raise ArtifactError(
            f"dataset '{uri}' is '{manifest.name}', expected '{expected_name}'; "
            "point at the right artifact"
        )
    for name, digest in manifest.files.items():
        if not exists(fs, f"{path}/{name}"):
            raise ArtifactError(f"dataset '{uri}' is incomplete: {name} is missing; rebuild it")
        if verify and sha256_file(fs, f"{path}/{name}") != digest:
            raise ArtifactError(f"dataset '{uri}': {name} does not match its manifest hash")
    return Dataset(uri, manifest)
