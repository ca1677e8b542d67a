"""How far the re-ranker's feature layer can go on ML-100k (issue 4), in one run.

The hybrid's gain over the fused order comes from its feature layer (the LM adds nothing
measurable, docs/BENCHMARKS.md), so this asks what more the layer can get. Each variant is
the listwise features-only layer (an MLP over each candidate's features, softmax over the
list), trained in-process with 3 seeds, stopped on every validation user's NDCG@10, and
reported on the test split against the fused order (paired bootstrap on the per-user
NDCG@10 averaged over seeds). Variants:

- base: the shipped features, K = 20, each user's last 10 training positions;
- K = 50 candidates (the recall ceiling rises from ~0.32 to ~0.52);
- + content: MiniLM cosine to the last / best of 5 / mean of 10 history items, genre
  affinity and share, raw and standardised within the list;
- + session: items tied at the history's last timestamp (ML-100k rates many at once, so
  "the last item" is often an arbitrary tie) and history length;
- the CF sources' user factors refolded from the history at each training position (as
  serving refolds after events) instead of the factors fitted before the hidden positions;
- the last 20 training positions instead of 10 (twice the examples, an older stack);
- a 5-seed ensemble of the base layer (summed log-softmax);
- rolling origin: stacks fitted with each user's last c items hidden (c in `--cutoffs`),
  one list per user at the first hidden item. Every such list looks like a test list (the
  stack saw everything before the target and nothing after), unlike the later positions
  of the holdout-10 stack, whose CF user factors miss the items before the target;
- a refit on training + validation lists, for the number of epochs that validation chose
  (validation lists are the most test-like there are: the test stack differs only by one
  more item per user).

    python benchmarks/bench_feature_layer.py --only "K 50" "rolling origin, K 50"

    python benchmarks/bench_feature_layer.py
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


@dataclass
class Rows:
    """Candidate lists of one split: features [N, K, F], label [N] (-1: a miss), and what
    the extra features need: the recent history, candidates, tie count, history length."""

    features: np.ndarray
    labels: np.ndarray
    history: list[np.ndarray]
    candidates: np.ndarray
    session: np.ndarray


def tied_at_end(data, user: int, n: int | None = None) -> int:
    """How many of the user's first `n` items (all: None) share the last one's timestamp."""
    times = data.seq_times[data.seq_indptr[user] : data.seq_indptr[user + 1]][:n]
    return int((times == times[-1]).sum()) if len(times) else 0


def build(ds, progress: bool, needs: set[str], cutoffs: tuple[int, ...]) -> dict[str, Rows]:
    """Training rows (holdout 10 and 20; K 20 and 50; rolling origin), validation and test
    rows. `needs` names the training sets the chosen variants read ("h20", "h10-refold",
    "roll"); holdout 10 is always built."""
    from pipelines.schema import Split
    from training.reranker.examples import subset
    from training.reranker.features import candidate_features
    from training.retrieval import FitData
    from training.retrieval.embeddings import TextEncoder
    from training.stack import fit_stack, holdout_fusion, stack_from_data

    data = FitData.from_dataset(ds, Split.TRAIN)
    emb = TextEncoder().encode(data.item_text).astype(np.float32)
    fusion = holdout_fusion(data, 1, emb, progress)
    out: dict[str, list] = {}

    def add(key, c, k, target, history, ties, stack, rng):
        idx = np.arange(min(k, len(c.items)))
        hit = np.flatnonzero(c.items[idx] == target)
        if rng is not None and not len(hit):
            return  # training: only lists that hold the true item (the shipped default)
        feats = candidate_features(subset(c, idx), stack.source_names, stack.log_popularity)
        order = rng.permutation(len(idx)) if rng is not None else np.arange(len(idx))
        items = c.items[idx][order]
        label = int(np.flatnonzero(items == target)[0]) if len(hit) else -1
        out.setdefault(key, []).append(
            (feats[order], label, history[-10:], items, (ties, len(history)))
        )

    holdouts = [(10, (20, 50))] + ([(20, (20,))] if "h20" in needs else [])
    for holdout, ks in holdouts:
        inner, hidden = data.holdout_last(holdout)
        stack = stack_from_data(inner, fusion, emb, "train-holdout", progress)
        gen, rng = stack.generator(), np.random.default_rng(0)
        for u in tqdm(range(inner.n_users), desc=f"holdout {holdout}", disable=not progress):
            visible = inner.history(u)
            for j, target in enumerate(hidden[u]):
                history = np.concatenate([visible, hidden[u][:j]]).astype(np.int64)
                c = gen.generate(u, history, n=max(ks))
                ties = tied_at_end(data, u, len(visible) + j)
                for k in ks:
                    add(f"train h{holdout} k{k}", c, k, target, history, ties, stack, rng)
                if holdout == 10 and j == 0 and "roll" in needs and 10 in cutoffs:
                    for k in ks:
                        add(f"train roll k{k}", c, k, target, history, ties, stack, rng)
                if holdout == 10 and "h10-refold" in needs:
                    c = refolded(stack, gen, u, history) if j else c
                    add("train h10-refold k20", c, 20, target, history, ties, stack, rng)

    if "roll" in needs:
        for cut in sorted(set(cutoffs) - {10}):
            inner, hidden = data.holdout_last(cut)
            stack = stack_from_data(inner, fusion, emb, f"train-cut{cut}", progress)
            gen, rng = stack.generator(), np.random.default_rng(cut)
            for u in tqdm(range(inner.n_users), desc=f"cutoff {cut}", disable=not progress):
                if not len(hidden[u]):
                    continue
                history = inner.history(u).astype(np.int64)
                c = gen.generate(u, history, n=50)
                ties = tied_at_end(data, u, len(history))
                for k in (20, 50):
                    add(f"train roll k{k}", c, k, int(hidden[u][0]), history, ties, stack, rng)

    seq = ds.sequences
    for split, through in ((Split.VALIDATION, Split.TRAIN), (Split.TEST, Split.VALIDATION)):
        if through == Split.TRAIN:
            stack, d = stack_from_data(data, fusion, emb, "train", progress), data
        else:
            stack, _ = fit_stack(ds, through, embeddings=emb, progress=progress)
            d = FitData.from_dataset(ds, through)
        targets = seq.items[seq.splits == split]
        gen = stack.generator()
        for u in tqdm(range(d.n_users), desc=split.label, disable=not progress):
            history = d.history(u)
            c = gen.generate(u, history, n=50)
            for k in (20, 50):
                add(
                    f"{split.label} k{k}", c, k, int(targets[u]), history,
                    tied_at_end(d, u), stack, None,
                )  # fmt: skip
    return {
        key: Rows(
            np.array([r[0] for r in rs], np.float32),
            np.array([r[1] for r in rs]),
            [r[2] for r in rs],
            np.array([r[3] for r in rs]),
            np.array([r[4] for r in rs], np.float64),
        )
        for key, rs in out.items()
    } | {"_embeddings": emb, "_categories": data.item_categories}


def cached_rows(args: argparse.Namespace, needs: set[str]) -> dict:
    """`build`, or its pickle from an earlier run with the same dataset and cutoffs."""
    from pipelines.artifact import load_dataset

    ds = load_dataset(args.data)
    key = {"dataset": ds.manifest.version, "cutoffs": sorted(args.cutoffs)}
    path = Path(args.cache) if args.cache else None
    if path is not None and path.exists():
        saved = pickle.loads(path.read_bytes())
        if saved["key"] == key and needs <= saved["needs"]:
            return saved["rows"]
        print(f"{path} was built for {saved['key']} / {sorted(saved['needs'])}: rebuilding")
    rows = build(ds, True, needs, tuple(args.cutoffs))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps({"key": key, "needs": needs | {"h10"}, "rows": rows}))
    return rows


def refolded(stack, gen, user: int, history: np.ndarray):
    """Candidates with the CF sources' user factors refolded from `history` (as serving
    does after an event), instead of the factors fitted before the hidden positions."""
    cf = {n: s for n, s in stack.sources.items() if hasattr(s, "user_factors")}
    saved = {n: s.user_factors[user].copy() for n, s in cf.items()}
    for s in cf.values():
        s.partial_fit_users(np.array([user]), [history])
    try:
        return gen.generate(user, history, n=20)
    finally:
        for n, s in cf.items():
            s.user_factors[user] = saved[n]


def content_features(rows: Rows, emb: np.ndarray, genres: np.ndarray) -> np.ndarray:
    unit = emb / (np.linalg.norm(emb, axis=1, keepdims=True) + 1e-9)
    out = []
    for h, c in zip(rows.history, rows.candidates, strict=True):
        sim = unit[c] @ unit[h].T
        g, gc = genres[h], genres[c]
        affinity = (gc @ g.mean(0)) / np.maximum(gc.sum(1), 1)
        share = (gc @ g.T > 0).mean(1)
        out.append(np.stack([sim[:, -1], sim[:, -5:].max(1), sim.mean(1), affinity, share], 1))
    x = np.array(out, np.float32)
    z = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-6)
    return np.concatenate([x, np.clip(z, -3, 3)], -1)


def session_features(rows: Rows) -> np.ndarray:
    ties, length = rows.session[:, 0], rows.session[:, 1]
    per_list = np.stack([np.log1p(ties) / 3, (ties > 1).astype(float), np.log1p(length) / 7], 1)
    k = rows.features.shape[1]
    return np.repeat(per_list[:, None, :], k, axis=1).astype(np.float32)


def target_ranks(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1-based rank of each list's true item (ties go to it); a miss ranks below any list."""
    ranks = np.full(len(labels), scores.shape[1] + 1)
    hit = labels >= 0
    s = scores[hit]
    ranks[hit] = 1 + (s > s[np.arange(len(s)), labels[hit]][:, None]).sum(1)
    return ranks


def ndcg10(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    from training.evaluation.metrics import metrics_from_ranks

    return metrics_from_ranks(target_ranks(scores, labels))["NDCG@10"]


def train_layer(
    x, y, xv, yv, seed: int, hidden: int = 32, patience: int = 6, epochs: int | None = None
):
    """Listwise softmax cross-entropy, Adam, stopped on validation NDCG@10; or, with
    `epochs`, exactly that many epochs (a refit whose length validation chose before).
    Returns the model, its validation NDCG@10 (None for a refit) and its epochs."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(x.shape[-1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt, xvt = torch.tensor(x), torch.tensor(y), torch.tensor(xv)
    best, state, stale, best_epoch = -1.0, None, 0, 0
    for epoch in range(epochs or 80):
        for b in np.array_split(rng.permutation(len(y)), max(len(y) // 32, 1)):
            loss = torch.nn.functional.cross_entropy(model(xt[b]).squeeze(-1), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epochs is not None:
            continue
        with torch.no_grad():
            v = float(ndcg10(model(xvt).squeeze(-1).numpy(), yv).mean())
        if v > best:
            best, stale, best_epoch = v, 0, epoch + 1
            state = {k: t.clone() for k, t in model.state_dict().items()}
        else:
            stale += 1
            if stale >= patience:
                break
    if epochs is not None:
        return model, None, epochs
    model.load_state_dict(state)
    return model, best, best_epoch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", default="artifacts/datasets/ml-100k")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--hidden", type=int, default=32, help="the layer's hidden units")
    p.add_argument("--out", default=str(RESULTS / "feature_layer.json"), help="results JSON")
    p.add_argument(
        "--cutoffs", type=int, nargs="+", default=[2, 4, 6, 10], help="rolling-origin cutoffs"
    )
    p.add_argument("--only", nargs="+", help="run only these variants (names as in the table)")
    p.add_argument(
        "--cache",
        help="a pickle of the built lists: read when it exists (and was built with these "
        "cutoffs and at least these training sets), else written; variants then run in minutes",
    )
    args = p.parse_args()

    import torch

    from training.evaluation.bootstrap import paired_bootstrap
    from training.evaluation.metrics import metrics_from_ranks

    torch.set_num_threads(1)
    console = Console(width=160)
    start = time.perf_counter()
    # name: (training sets, K, extra features, seeds, ensemble, refit on validation too)
    variants = {
        "base (K 20, last 10 positions)": (["h10"], 20, None, args.seeds, False, False),
        "K 50": (["h10"], 50, None, args.seeds, False, False),
        "+ content and genre similarity": (["h10"], 20, "content", args.seeds, False, False),
        "+ session (ties at the end, length)": (["h10"], 20, "session", args.seeds, False, False),
        "CF user factors refolded at each position": (
            ["h10-refold"], 20, None, args.seeds, False, False,
        ),
        "last 20 positions": (["h20"], 20, None, args.seeds, False, False),
        "last 20 positions + session": (["h20"], 20, "session", args.seeds, False, False),
        "base, 5-seed ensemble": (["h10"], 20, None, 5, True, False),
        "K 50, 5-seed ensemble": (["h10"], 50, None, 5, True, False),
        "rolling origin, K 20": (["roll"], 20, None, args.seeds, False, False),
        "rolling origin, K 50": (["roll"], 50, None, args.seeds, False, False),
        "last 10 positions + rolling origin, K 50": (
            ["h10", "roll"], 50, None, args.seeds, False, False,
        ),
        "K 50, refit with validation": (["h10"], 50, None, args.seeds, False, True),
        "rolling origin, K 50, refit with validation": (
            ["roll"], 50, None, args.seeds, False, True,
        ),
        "rolling origin, K 50, refit with validation, 5-seed ensemble": (
            ["roll"], 50, None, 5, True, True,
        ),
        "K 20, refit with validation": (["h10"], 20, None, args.seeds, False, True),
        "rolling origin, K 20, refit with validation": (
            ["roll"], 20, None, args.seeds, False, True,
        ),
        "last 10 positions + rolling origin, K 20, refit with validation": (
            ["h10", "roll"], 20, None, args.seeds, False, True,
        ),
        "last 10 positions + rolling origin, K 50, refit with validation": (
            ["h10", "roll"], 50, None, args.seeds, False, True,
        ),
    }  # fmt: skip
    if args.only:
        unknown = set(args.only) - set(variants)
        if unknown:
            p.error(f"unknown variants {sorted(unknown)}; known: {list(variants)}")
        variants = {name: variants[name] for name in args.only}
    needs = {key for v in variants.values() for key in v[0]}
    rows = cached_rows(args, needs)
    emb, cats = rows.pop("_embeddings"), rows.pop("_categories")
    names = sorted({c for cs in cats for c in cs})
    genres = np.zeros((len(cats), len(names)), np.float32)
    for i, cs in enumerate(cats):
        genres[i, [names.index(c) for c in cs]] = 1

    def inputs(key: str, extra: str | None) -> tuple[np.ndarray, np.ndarray]:
        r = rows[key]
        x = r.features
        if extra == "content":
            x = np.concatenate([x, content_features(r, emb, genres)], -1)
        if extra == "session":
            x = np.concatenate([x, session_features(r)], -1)
        return x, r.labels

    # Test lists are in fused order: the true item's place is its fused rank.
    test_labels = rows["test k20"].labels
    fused = metrics_from_ranks(np.where(test_labels >= 0, test_labels + 1, 21))["NDCG@10"]
    results = []
    for name, (sets, k, extra, seeds, ensemble, refit) in tqdm(variants.items(), desc="variants"):
        parts = [inputs(f"train {s} k{k}", extra) for s in sets]
        x, y = np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts])
        xv, yv = inputs(f"validation k{k}", extra)
        xt, yt = inputs(f"test k{k}", extra)
        vals, tests, summed = [], [], 0.0
        for seed in range(seeds):
            model, val, epochs = train_layer(x, y, xv, yv, seed, args.hidden)
            vals.append(val)
            if refit:  # validation lists that hold the true item join the training lists
                hit = yv >= 0
                model, _, _ = train_layer(
                    np.concatenate([x, xv[hit]]), np.concatenate([y, yv[hit]]), xv, yv, seed,
                    args.hidden, epochs=epochs,
                )  # fmt: skip
            with torch.no_grad():
                logits = torch.log_softmax(model(torch.tensor(xt)).squeeze(-1), -1).numpy()
            tests.append(ndcg10(logits, yt))
            summed = summed + logits
        per_user = ndcg10(summed, yt) if ensemble else np.mean(tests, 0)
        test = paired_bootstrap(per_user, fused)
        results.append(
            {
                "variant": name,
                "train_examples": len(y),
                "val_ndcg10": float(np.mean(vals)),
                "test_ndcg10": float(per_user.mean()),
                "seed_test_ndcg10": [float(t.mean()) for t in tests],
                "vs_fused": test.mean_difference,
                "low": test.low,
                "high": test.high,
                "p": test.p_value,
            }
        )

    t = Table(title=f"feature layer variants, test NDCG@10 (fused order {fused.mean():.4f})")
    cols = ("variant", "train ex.", "val N@10", "test N@10", "seeds min-max", "vs fused", "p")
    for c in cols:
        t.add_column(c, justify="left" if c == "variant" else "right")
    for r in results:
        s = r["seed_test_ndcg10"]
        t.add_row(
            r["variant"],
            str(r["train_examples"]),
            f"{r['val_ndcg10']:.4f}",
            f"{r['test_ndcg10']:.4f}",
            f"{min(s):.4f}-{max(s):.4f}",
            f"{r['vs_fused']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}]",
            f"{r['p']:.3f}",
        )
    console.print(t)
    out = {
        "machine": f"{os.cpu_count()} vCPU {platform.processor() or platform.machine()}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv),
        "seconds": time.perf_counter() - start,
        "fused_test_ndcg10": float(fused.mean()),
        "candidate_recall_k20": float(np.mean(rows["test k20"].labels >= 0)),
        "candidate_recall_k50": float(np.mean(rows["test k50"].labels >= 0)),
        "variants": results,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
