"""The serving re-ranker on a GPU, in one call on a lent device.

`training.reranker.inference.Reranker` is what the Serve graph's Reranker deployment loads;
it moves itself to a GPU when its replica has one. This script builds an encoder of
all-MiniLM-L6-v2's shape with random weights (nothing to download or carry but the
tokenizer files) and a hybrid re-ranker folder on it, then:
- times `Reranker.rerank` (one request, what a replica does without batching) and
  `score_rows` at batch 8 and 32;
- scores the same prompts on the GPU and, with the model moved back, on the CPU, and
  reports how far the scores and the top-10 orders differ.

    python benchmarks/gpu_serving_check.py --tokenizer DIR   # on a GPU machine
    python benchmarks/gpu_serving_check.py --tiny            # a 2-layer shape, CPU only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

MINILM = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
SOURCES = ["transitions", "SASRec", "BPR", "ALS", "content", "popular"]


def build_base(folder: Path, tokenizer_dir: str, shape: dict) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, max_position_embeddings=512, **shape)
    model = BertModel(cfg)
    model.config.architectures = ["BertModel"]
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def build_reranker(folder: Path, base: Path, texts: list[str]) -> Path:
    import torch

    from training.reranker.features import feature_names
    from training.reranker.model import (
        RerankerConfig,
        build_model,
        inspect_base,
        load_tokenizer,
        make_renderer,
        save_reranker,
    )
    from training.reranker.train import check_config

    cfg = RerankerConfig(base_model=str(base))
    info = inspect_base(str(base))
    renderer = make_renderer(info, load_tokenizer(info), cfg.template, texts)
    features = feature_names(SOURCES)
    model = build_model(cfg, info, len(features), renderer.index_ids)
    # The LM head starts at zero (a hybrid begins as its feature layer): give it weights, so
    # that the scores compared below depend on the encoder.
    torch.manual_seed(1)
    torch.nn.init.normal_(model.head.weight, std=0.5)
    meta = check_config(cfg, texts) | {"features": features, "sources": SOURCES}
    save_reranker(model, folder, meta)
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--tokenizer", default=None, help="[default: the offline MiniLM's folder]")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--repeats", type=int, default=50)
    args = p.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    from training.reranker.examples import Row
    from training.reranker.features import feature_names
    from training.reranker.inference import Reranker

    tokenizer = args.tokenizer
    if tokenizer is None:
        from training.retrieval.embeddings import default_model_path

        tokenizer = default_model_path()
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(3000)]
    texts = [" ".join(rng.choice(vocab, 8)) for _ in range(2000)]
    n_feat = len(feature_names(SOURCES))
    rows = [
        Row(
            -1,
            rng.integers(0, 2000, 10),
            rng.permutation(2000)[:20],
            rng.normal(size=(20, n_feat)).astype(np.float32),
            -1,
        )
        for _ in range(args.rows)
    ]
    gpu = torch.cuda.is_available()
    out: dict = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv),
        "machine": torch.cuda.get_device_name(0) if gpu else "CPU",
        "shape": "tiny" if args.tiny else "all-MiniLM-L6-v2 (random weights)",
        "torch": torch.__version__,
    }
    with tempfile.TemporaryDirectory() as tmp:
        base = build_base(Path(tmp) / "base", tokenizer, TINY if args.tiny else MINILM)
        folder = build_reranker(Path(tmp) / "reranker", base, texts)

        served = Reranker(folder, texts)
        device = next(served.scorer.model.parameters()).device.type
        got = served.score_rows(rows, batch_size=8)

        def timed(fn) -> float:
            fn()  # warm-up
            ms = []
            for _ in range(args.repeats):
                if gpu:
                    torch.cuda.synchronize()
                t = time.perf_counter()
                fn()
                if gpu:
                    torch.cuda.synchronize()
                ms.append((time.perf_counter() - t) * 1000)
            return float(np.percentile(ms, 50))

        r = rows[0]
        out["latency_ms"] = {
            "1 (rerank)": timed(lambda: served.rerank(r.history, r.candidates, r.features)),
            "8": timed(lambda: served.score_rows(rows[:8], batch_size=8)),
            "32": timed(lambda: served.score_rows(rows[:32], batch_size=32)),
        }

        # The CPU reference: the same weights, moved off the replica's device.
        served.scorer.model.to("cpu")
        ref = served.score_rows(rows, batch_size=8)
        diff = max(float(np.abs(a - b).max()) for a, b in zip(ref, got, strict=True))
        scale = max(float(np.abs(a).max()) for a in ref)
        same_top10 = np.mean(
            [
                np.array_equal(
                    np.argsort(-a, kind="stable")[:10], np.argsort(-b, kind="stable")[:10]
                )
                for a, b in zip(ref, got, strict=True)
            ]
        )
        out |= {
            "served_on": device,
            "max_abs_score_diff": diff,
            "score_scale": scale,
            "same_top10_share": float(same_top10),
        }

    table = Table(title=f"serving re-ranker ({out['shape']}) on {device} ({out['machine']})")
    for c in ("batch", "p50 ms per batch", "p50 ms per request"):
        table.add_column(c, justify="right")
    for b, ms in out["latency_ms"].items():
        n = int(b.split()[0])
        table.add_row(b, f"{ms:.1f}", f"{ms / n:.2f}")
    console = Console()
    console.print(table)
    console.print(
        f"served on {device} vs moved to the CPU: max |score diff| {diff:.2e} (scores up to "
        f"{scale:.2f}); same top-10 order in {same_top10:.0%} of {len(rows)} prompts"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "gpu_serving_check_tiny.json" if args.tiny else "gpu_serving_check.json"
    (RESULTS / name).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
