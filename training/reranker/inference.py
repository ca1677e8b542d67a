"""A trained re-ranker ready for requests: loaded once, optionally compressed for CPU, and
called with (history, candidates, features). Serving and the benchmarks use this class."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from training.reranker.compression import Compression
from training.reranker.examples import Row
from training.reranker.model import (
    RerankerConfig,
    load_reranker,
    load_tokenizer,
    make_renderer,
)
from training.reranker.prompt import PromptTemplate
from training.reranker.scoring import RowScorer


class Reranker:
    def __init__(
        self,
        folder: str | Path,
        item_texts: list[str],
        compression: Compression | None = None,
        threads: int | None = None,
        base_model: str | None = None,
    ):
        import torch

        if threads:
            torch.set_num_threads(threads)
        model, meta, info = load_reranker(folder, base_model=base_model)
        self.meta, self.info = meta, info
        self.folder = str(folder)
        self.compression = compression or Compression()
        template = RerankerConfig.model_validate(meta["config"]).template
        if self.compression.item_tokens:
            template = template.model_copy(update={"item_tokens": self.compression.item_tokens})
        self.template: PromptTemplate = template
        self.features = meta["features"]
        self.k = template.candidates
        renderer, pad_id = None, 0
        if info is not None:
            tok = load_tokenizer(info)
            renderer = make_renderer(info, tok, template, item_texts)
            pad_id = tok.pad_token_id
            model = _compress(model, self.compression)
        if torch.cuda.is_available() and not self.compression.int8:
            model = model.to("cuda")  # a replica given a GPU uses it
        self.renderer = renderer
        self.scorer = RowScorer(
            model, renderer, pad_id, info is not None and info.kind == "causal", self.k
        )

    @property
    def version(self) -> str:
        return str(self.meta.get("version") or Path(self.folder).name)

    def add_items(self, texts: list[str]) -> None:
        if self.renderer is not None:
            self.renderer.add_items(texts)

    def score_rows(self, rows: list[Row], batch_size: int = 1) -> list[np.ndarray]:
        return self.scorer.scores(rows, batch_size=batch_size)

    def rerank(
        self, history: np.ndarray, candidates: np.ndarray, features: np.ndarray
    ) -> tuple[np.ndarray, float]:
        """(scores for the first K candidates, seconds)."""
        k = min(self.k, len(candidates))
        row = Row(
            -1,
            np.asarray(history)[-self.template.history_items :],
            candidates[:k],
            features[:k],
            -1,
        )
        start = time.perf_counter()
        scores = self.scorer.scores([row])[0]
        return scores, time.perf_counter() - start


def _compress(model, c: Compression):
    import torch

    if not (c.int8 or c.layers):
        return model
    lm = model.lm.merge_and_unload()  # LoRA folded into the base weights
    if c.layers:
        blocks = _blocks(lm)
        if blocks is not None:
            del blocks[c.layers :]
    if c.int8:
        names = {
            n
            for n, m in lm.named_modules()
            if isinstance(m, torch.nn.Linear) and not _is_ffn_output(n)
        }
        lm = torch.ao.quantization.quantize_dynamic(lm, names, dtype=torch.qint8)
    model.lm = lm
    return model


def _blocks(lm):
    for path in ("encoder.layer", "model.layers", "transformer.h"):
        obj = lm
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    return None


def _is_ffn_output(name: str) -> bool:
    # BERT's feed-forward output is "...layer.N.output.dense" (not "attention.output.dense").
    return name.endswith("output.dense") and "attention" not in name
