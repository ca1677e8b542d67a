"""Scoring rows with a re-ranker: the one inference path of evaluation, training-time
validation and serving."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from training.reranker.examples import Row
from training.reranker.model import collate
from training.reranker.prompt import PromptRenderer


class RowScorer:
    def __init__(self, model, renderer: PromptRenderer | None, pad_id: int, causal: bool, k: int):
        self.model = model
        self.renderer = renderer
        self.pad_id = pad_id
        self.causal = causal
        self.k = k

    def batch(self, rows: Sequence[Row], labels: bool = False):
        rendered = [
            self.renderer.render(r.history, r.candidates)
            if self.renderer is not None
            else _no_prompt(len(r.candidates))
            for r in rows
        ]
        return collate(
            rendered,
            [r.features for r in rows],
            self.pad_id,
            self.causal,
            self.k,
            [r.label for r in rows] if labels else None,
        )

    def scores(self, rows: Sequence[Row], batch_size: int = 8) -> list[np.ndarray]:
        """Per row, one score per candidate (higher is better)."""
        import torch

        out: list[np.ndarray] = []
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            for i in range(0, len(rows), batch_size):
                chunk = rows[i : i + batch_size]
                b = self.batch(chunk)
                t = {k: v.to(device) for k, v in b.tensors.items()}
                s = self.model(**t).float().cpu().numpy()
                out.extend(s[j, : len(r.candidates)] for j, r in enumerate(chunk))
        return out


def _no_prompt(k: int):
    from training.reranker.prompt import Rendered

    return Rendered([0], [0] * k)


def label_ranks(rows: Sequence[Row], scores: Sequence[np.ndarray], miss: int) -> np.ndarray:
    """1-based rank of each row's true item after re-ranking; `miss` where it is absent.
    Ties go to the earlier (fused-order) candidate."""
    out = np.full(len(rows), miss, dtype=np.int64)
    for i, (r, s) in enumerate(zip(rows, scores, strict=True)):
        if r.label >= 0:
            order = np.lexsort((np.arange(len(s)), -s))
            out[i] = 1 + int(np.flatnonzero(order == r.label)[0])
    return out
