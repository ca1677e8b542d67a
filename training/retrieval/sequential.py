"""A learned sequential source: causal self-attention over the user's recent items (SASRec,
Kang & McAuley 2018), trained to predict each next item with a softmax over the catalogue.

It reads the history it is given, so (like transitions) a new event changes the next
request with no refit. It sees patterns beyond the last few items that transitions cannot,
which is what lifts the merged candidates' recall (docs/BENCHMARKS.md, issue 3).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Self

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from training.retrieval.base import RetrievalError, Retriever, pad_to
from training.retrieval.data import FitData
from training.retrieval.item_index import INDEX_PREFIX, ItemIndex
from training.retrieval.sasrec_inference import NumpyInference
from training.retrieval.views import SourceView, empty_view, masked


class _Network(nn.Module):
    """Item + position embeddings, pre-norm causal transformer blocks; the output at a
    position scores the next item against the (shared) item embeddings. Id 0 is padding."""

    def __init__(self, n_items: int, p: dict[str, Any], sparse_items: bool = False):
        super().__init__()
        d = p["dim"]
        self.items = nn.Embedding(n_items + 1, d, padding_idx=0, sparse=sparse_items)
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


def training_windows(data: FitData, max_len: int, stride: int | None = None) -> np.ndarray:
    """Every user's sequence cut from its end into windows of `max_len + 1` items (shifted
    by one, padding id 0), a window ending every `stride` items (default `max_len`: every
    transition is predicted once; smaller strides overlap the windows)."""
    step = stride or max_len
    rows = []
    for user in range(data.n_users):
        h = data.history(user).astype(np.int64) + 1
        for end in range(len(h), 1, -step):
            w = h[max(0, end - max_len - 1) : end]
            row = np.zeros(max_len + 1, dtype=np.int64)
            row[: len(w)] = w
            rows.append(row)
    return np.stack(rows) if rows else np.zeros((0, max_len + 1), dtype=np.int64)


def _sampled_loss(
    network: _Network, hidden: torch.Tensor, targets: torch.Tensor, n_items: int, n_neg: int
) -> torch.Tensor:
    """Cross-entropy of each target against `n_neg` items drawn uniformly for the batch
    (shared by its positions; a draw equal to a position's target is masked there).
    `targets` are shifted ids (1-based)."""
    negatives = torch.randint(1, n_items + 1, (n_neg,))
    pos = (hidden * network.items(targets)).sum(-1, keepdim=True)
    neg = hidden @ network.items(negatives).T
    neg = neg.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))
    logits = torch.cat([pos, neg], dim=1)
    return nn.functional.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long))


def _optimizers(network: _Network, lr: float, sparse: bool) -> list[torch.optim.Optimizer]:
    """Adam over every weight; with `sparse`, the item table's rows are updated only where a
    batch touched them (`SparseAdam`, the "lazy" Adam of large embedding tables): a dense
    Adam step reads and writes the whole table every batch, so an epoch's cost would grow
    with users x items (at 200k items that step is most of a batch's time)."""
    if not sparse:
        return [torch.optim.Adam(network.parameters(), lr=lr)]
    rest = [w for name, w in network.named_parameters() if name != "items.weight"]
    return [
        torch.optim.SparseAdam([network.items.weight], lr=lr),
        torch.optim.Adam(rest, lr=lr),
    ]


def train_batch(
    network: _Network,
    opts: list[torch.optim.Optimizer],
    batch: torch.Tensor,
    n_items: int,
    negatives: int | None,
) -> torch.Tensor:
    """One optimiser step on a batch of windows (shifted ids, 0 padding): next-item
    cross-entropy over the catalogue, or against `negatives` sampled items. The loss."""
    x, y = batch[:, :-1], batch[:, 1:]
    keep = y > 0
    hidden = network(x)[keep]
    if negatives is not None:
        loss = _sampled_loss(network, hidden, y[keep], n_items, negatives)
    else:
        loss = nn.functional.cross_entropy(network.logits(hidden), y[keep] - 1)
    for o in opts:
        o.zero_grad()
    loss.backward()
    for o in opts:
        o.step()
    return loss


def _load_warm(network: _Network, arrays: dict[str, np.ndarray], item_map: np.ndarray) -> None:
    """A previous fit's weights into `network`; item rows follow `item_map` (row 0 is
    padding, item i is row i + 1), new items keep their fresh initialisation."""
    state = network.state_dict()
    known = np.flatnonzero(item_map >= 0)
    with torch.no_grad():
        for name, value in arrays.items():
            if name == "items.weight":
                rows = torch.from_numpy(value[item_map[known] + 1])
                state[name][torch.from_numpy(known + 1)] = rows
            else:
                state[name].copy_(torch.from_numpy(value))
    network.load_state_dict(state)


class SelfAttentive(Retriever):
    """SASRec-style next-item model. Scores are the next-item logits after the user's last
    `max_len` items; an empty history has nothing to go on (-inf everywhere), and items
    added after training get -inf until the next refit (content similarity reaches them)."""

    kind = "sasrec"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        # 20 epochs of batch 128 (400 steps) left it undertrained: batch 32 for 40 epochs
        # lifted ML-100k validation NDCG@10 from 0.108 to 0.129 (docs/BENCHMARKS.md).
        return {
            "max_len": 50,
            "dim": 64,
            "layers": 2,
            "heads": 2,
            "dropout": 0.2,
            "epochs": 40,
            "batch_size": 32,
            "learning_rate": 4e-3,
            "window_stride": None,
            # "full": softmax over the whole catalogue; "sampled": over the target and
            # `negatives` items drawn uniformly per batch; "auto": full up to
            # `full_softmax_items` items, sampled beyond (the full softmax's cost grows
            # with the catalogue: at 200k items it is most of an epoch).
            "loss": "auto",
            "negatives": 1024,
            "full_softmax_items": 20_000,
            # "auto": the sampled loss updates only the item rows a batch touched
            # (`_optimizers`), the full softmax every row (its gradient reaches them all);
            # "dense" or "sparse" to choose.
            "item_updates": "auto",
            # A warm fit's learning rate: "cosine" from `warm_learning_rate` (None: the
            # full fit's) down to zero, so the short fine-tune ends settled rather than
            # mid-step, or "constant". After 10,000 new events on ML-100k, a retrain's fit
            # with 10 warm epochs this way came 0.004 NDCG@10 below a from-scratch fit,
            # against 0.007 at a constant 4e-3 (docs/BENCHMARKS.md, Retraining).
            "warm_schedule": "cosine",
            "warm_learning_rate": 8e-3,
            # A warm fit shorter than an epoch (a 1-epoch recipe at a million users: 5% is
            # 1,600 of 31,000 batches) trains at least this many batches, or one epoch.
            "warm_min_batches": 2000,
            # From this many trained items a request probes an index over the output item
            # vectors (0: never); how many of its lists (docs/RETRIEVAL.md, views and item indexes)
            "index_from": 50_000,
            "index_probes": 192,
            "seed": 0,
        }

    def loss_kind(self, n_items: int) -> str:
        """The loss a fit over `n_items` items uses ("full" or "sampled")."""
        loss = self.params["loss"]
        if loss not in ("auto", "full", "sampled"):
            raise RetrievalError(f"sasrec: loss must be auto, full or sampled, not {loss!r}")
        if loss == "auto":
            return "full" if n_items <= self.params["full_softmax_items"] else "sampled"
        return loss

    def sparse_updates(self, sampled: bool) -> bool:
        """Whether a fit updates only the item rows each batch touched (`item_updates`)."""
        kind = self.params["item_updates"]
        if kind not in ("auto", "dense", "sparse"):
            raise RetrievalError(
                f"sasrec: item_updates must be auto, dense or sparse, not {kind!r}"
            )
        if kind == "sparse" and not sampled:
            raise RetrievalError(
                "sasrec: item_updates sparse needs the sampled loss (the full softmax's "
                "gradient reaches every item): set loss to sampled, or item_updates to auto"
            )
        return kind == "sparse" or (kind == "auto" and sampled)

    def warm_fit(
        self,
        data: FitData,
        previous: Retriever,
        item_map: np.ndarray,
        share: float,
        user_map: np.ndarray | None = None,
    ) -> Self:
        """`share` of the full fit's batches, from `previous`'s weights: an item it knew
        keeps its embedding, a new item starts as a fresh one does. Whole epochs where the
        share comes to one or more (at least one); less than an epoch: that share of an
        epoch's batches, at least `warm_min_batches` of them."""
        if not isinstance(previous, SelfAttentive) or any(
            previous.params[k] != self.params[k] for k in ("max_len", "dim", "layers", "heads")
        ):
            return self.fit(data)
        budget = self.params["epochs"] * share
        return self.fit(data, init=(previous.arrays, np.asarray(item_map)), epochs=budget)

    def fit(
        self,
        data: FitData,
        on_epoch: Callable[[int, Self], None] | None = None,
        init: tuple[dict[str, np.ndarray], np.ndarray] | None = None,
        epochs: int | None = None,
    ) -> Self:
        """Train on `data`; `on_epoch(epoch, self)`, if given, is called after each epoch with
        the model usable for scoring (learning curves, early stopping by the caller). `init`:
        (weights of a previous fit, each item's index in it or -1) to start from; `epochs`
        overrides the schedule's (warm, below one: a share of one epoch, `warm_fit`)."""
        p = self.params
        windows = torch.from_numpy(training_windows(data, p["max_len"], p["window_stride"]))
        if not len(windows):
            raise RetrievalError("sasrec: no user has two interactions or more to learn from")
        sampled = self.loss_kind(data.n_items) == "sampled"
        sparse = self.sparse_updates(sampled)
        self.fit_info = {"loss": "sampled" if sampled else "full", "items": data.n_items}
        if sampled:
            self.fit_info["negatives"] = p["negatives"]
        self.fit_info["item_updates"] = "sparse" if sparse else "dense"
        with torch.random.fork_rng():
            torch.manual_seed(p["seed"])
            network = _Network(data.n_items, p, sparse_items=sparse)
            per_epoch = -(-len(windows) // p["batch_size"])
            n_epochs, steps = _schedule(epochs or p["epochs"], per_epoch, init is not None, p)
            if init is not None:
                _load_warm(network, *init)
                self.fit_info["warm_epochs"] = n_epochs
                self.fit_info["warm_batches"] = steps
            lr = p["learning_rate"]
            if init is not None and p["warm_learning_rate"] is not None:
                lr = p["warm_learning_rate"]
            opts = _optimizers(network, lr, sparse)
            warm = (
                [_warm_schedule(o, p["warm_schedule"], steps) for o in opts]
                if init is not None
                else []
            )
            schedules = [x for x in warm if x is not None]
            network.train()
            # Batches, not epochs: one epoch at a million users runs for half an hour.
            bar = tqdm(total=steps, desc="sasrec", leave=False, unit="batch", mininterval=5)
            for epoch in range(n_epochs):
                order = torch.randperm(len(windows))
                # A warm fit of less than an epoch stops after its share of the batches.
                end = min(len(windows), (steps - epoch * per_epoch) * p["batch_size"])
                for start in range(0, end, p["batch_size"]):
                    batch = windows[order[start : start + p["batch_size"]]]
                    negatives = p["negatives"] if sampled else None
                    loss = train_batch(network, opts, batch, data.n_items, negatives)
                    for schedule in schedules:
                        schedule.step()
                    bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
                if on_epoch is not None:
                    self._take_weights(network, data)
                    on_epoch(epoch + 1, self)
                    network.train()
            bar.close()
        self._take_weights(network, data)
        return self

    def _take_weights(self, network: _Network, data: FitData) -> None:
        """Score with the network's current weights (a copy: training goes on changing them)."""
        self.set_state({k: v.detach().numpy().copy() for k, v in network.state_dict().items()})
        self._fitted(data)

    @property
    def trained_items(self) -> int:
        return self.arrays["items.weight"].shape[0] - 1

    def _sequence(self, history: np.ndarray) -> np.ndarray:
        """The history's trained items, the last `max_len`, as the network's 1-based ids."""
        h = np.asarray(history, dtype=np.int64)
        return h[h < self.trained_items][-self.params["max_len"] :] + 1

    def score(self, user: int | None, history: np.ndarray) -> np.ndarray:
        seq = self._sequence(history)
        if not len(seq):
            return np.full(self.n_items, -np.inf, dtype=np.float32)
        return pad_to(self._inference.next_item_logits(seq), self.n_items)

    def score_items(self, user: int | None, history: np.ndarray, items: np.ndarray) -> np.ndarray:
        seq = self._sequence(history)
        if not len(seq):
            return np.full(len(items), -np.inf, dtype=np.float32)
        return self._dot(self._inference.hidden(seq), np.asarray(items, dtype=np.int64))

    def _dot(self, hidden: np.ndarray, items: np.ndarray) -> np.ndarray:
        out = np.full(len(items), -np.inf, dtype=np.float32)
        known = items < self.trained_items
        out[known] = self._inference.outputs[items[known]] @ hidden
        return out

    _index: ItemIndex | None = None

    def _item_index(self) -> ItemIndex | None:
        """The index over the output item vectors, from `index_from` trained items (0:
        never): built at the first search or save after the weights were set, not at every
        epoch's weights."""
        start = self.params.get("index_from", 0)
        if self._index is None and start and self.trained_items >= start:
            self._index = ItemIndex.over(self._inference.outputs, start)
        return self._index

    def search(
        self, user: int | None, history: np.ndarray, banned: np.ndarray, depth: int
    ) -> SourceView | None:
        """The next items from the index over the output item vectors (None without one)."""
        index = self._item_index()
        if index is None:
            return None
        seq = self._sequence(history)
        if not len(seq):
            return empty_view()
        hidden = self._inference.hidden(seq)
        return index.view(
            self._inference.outputs,
            hidden,
            banned,
            depth,
            self.params["index_probes"],
            lambda items: masked(self._dot(hidden, items), items, banned),
        )

    def state(self) -> dict[str, np.ndarray]:
        index = self._item_index()
        return {**self.arrays, **(index.state(INDEX_PREFIX) if index is not None else {})}

    def set_state(self, arrays: dict[str, np.ndarray]) -> None:
        weights = {k: v for k, v in arrays.items() if not k.startswith(INDEX_PREFIX)}
        self.arrays = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        self._inference = NumpyInference(self.arrays, self.params["heads"])
        self._index = ItemIndex.from_state(arrays, INDEX_PREFIX)


def _schedule(epochs: float, per_epoch: int, warm: bool, params: dict[str, Any]) -> tuple[int, int]:
    """(epochs, batches) a fit runs: whole epochs, or for a warm fit of less than one, that
    share of one epoch's `per_epoch` batches, at least `warm_min_batches` (at most all)."""
    if epochs >= 1 or not warm:
        n = max(1, round(epochs))
        return n, n * per_epoch
    least = min(per_epoch, int(params["warm_min_batches"]))
    return 1, max(least, math.ceil(epochs * per_epoch))


def _warm_schedule(
    opt: torch.optim.Optimizer, kind: str, steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if kind == "constant":
        return None
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    raise RetrievalError(f"sasrec: warm_schedule must be constant or cosine, not {kind!r}")
