"""A learned sequential source: causal self-attention over the user's recent items (SASRec,
Kang & McAuley 2018), trained to predict each next item with a softmax over the catalogue.

It reads the history it is given, so (like transitions) a new event changes the next
request with no refit. It sees patterns beyond the last few items that transitions cannot,
which is what lifts the merged candidates' recall (docs/BENCHMARKS.md, issue 3).
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from training.retrieval.base import Retriever, pad_to
from training.retrieval.data import FitData


class _Network(nn.Module):
    """Item + position embeddings, pre-norm causal transformer blocks; the output at a
    position scores the next item against the (shared) item embeddings. Id 0 is padding."""

    def __init__(self, n_items: int, p: dict[str, Any]):
        super().__init__()
        d = p["dim"]
        self.items = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.positions = nn.Embedding(p["max_len"], d)
        nn.init.normal_(self.items.weight, std=d**-0.5)
        nn.init.normal_(self.positions.weight, std=d**-0.5)
        block = nn.TransformerEncoderLayer(
            d, p["heads"], 2 * d, p["dropout"], batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(block, p["layers"], enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(p["dropout"])

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden state per position of right-padded sequences (batch x length x dim)."""
        length = seq.shape[1]
        h = self.dropout(self.items(seq) + self.positions.weight[None, :length])
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
        return self.norm(self.blocks(h, mask=causal, is_causal=True))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.items.weight[1:].T


def training_windows(data: FitData, max_len: int) -> np.ndarray:
    """Every user's sequence cut from its end into windows of `max_len + 1` items (shifted
    by one, padding id 0), so long histories give several examples and every transition is
    predicted once."""
    rows = []
    for user in range(data.n_users):
        h = data.history(user).astype(np.int64) + 1
        for end in range(len(h), 1, -max_len):
            w = h[max(0, end - max_len - 1) : end]
            row = np.zeros(max_len + 1, dtype=np.int64)
            row[: len(w)] = w
            rows.append(row)
    return np.stack(rows) if rows else np.zeros((0, max_len + 1), dtype=np.int64)


class SelfAttentive(Retriever):
    """SASRec-style next-item model. Scores are the next-item logits after the user's last
    `max_len` items; an empty history has nothing to go on (-inf everywhere), and items
    added after training get -inf until the next refit (content similarity reaches them)."""

    kind = "sasrec"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {
            "max_len": 50,
            "dim": 64,
            "layers": 2,
            "heads": 2,
            "dropout": 0.2,
            "epochs": 20,
            "batch_size": 128,
            "learning_rate": 4e-3,
            "seed": 0,
        }

    def fit(self, data: FitData) -> Self:
        p = self.params
        windows = torch.from_numpy(training_windows(data, p["max_len"]))
        with torch.random.fork_rng():
            torch.manual_seed(p["seed"])
            self.network = _Network(data.n_items, p)
            opt = torch.optim.Adam(self.network.parameters(), lr=p["learning_rate"])
            self.network.train()
            bar = tqdm(range(p["epochs"]), desc="sasrec", leave=False)
            for _ in bar:
                order = torch.randperm(len(windows))
                for start in range(0, len(windows), p["batch_size"]):
                    batch = windows[order[start : start + p["batch_size"]]]
                    x, y = batch[:, :-1], batch[:, 1:]
                    keep = y > 0
                    hidden = self.network(x)[keep]
                    loss = nn.functional.cross_entropy(self.network.logits(hidden), y[keep] - 1)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                bar.set_postfix(loss=f"{loss.item():.3f}")
        self.network.eval()
        self._fitted(data)
        return self

    @property
    def trained_items(self) -> int:
        return self.network.items.num_embeddings - 1

    def score(self, user: int | None, history: np.ndarray) -> np.ndarray:
        h = np.asarray(history, dtype=np.int64)
        h = h[h < self.trained_items][-self.params["max_len"] :]
        if not len(h):
            return np.full(self.n_items, -np.inf, dtype=np.float32)
        with torch.inference_mode():
            hidden = self.network(torch.from_numpy(h + 1)[None])[0, -1]
            scores = self.network.logits(hidden).numpy().astype(np.float32)
        return pad_to(scores, self.n_items)

    def state(self) -> dict[str, np.ndarray]:
        return {k: v.detach().numpy() for k, v in self.network.state_dict().items()}

    def set_state(self, arrays: dict[str, np.ndarray]) -> None:
        n_items = arrays["items.weight"].shape[0] - 1
        self.network = _Network(n_items, self.params)
        self.network.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
        self.network.eval()
