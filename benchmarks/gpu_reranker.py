"""The GPU configuration of the re-ranker, in one call on a lent device: a Qwen2-0.5B-shaped
causal LM with random weights (built here, nothing downloaded), LoRA, bf16; listwise
prompts of K=20 candidates. Measures latency at batch 1/8/32 and training examples/s.

    python benchmarks/gpu_reranker.py            # on a GPU machine
    python benchmarks/gpu_reranker.py --tiny     # a 2-layer shape, to check the script on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

QWEN2_05B = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151_936,
    max_position_embeddings=4096,
)
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=2000,
    max_position_embeddings=1024,
)


def build(folder: Path, shape: dict, texts: list[str]) -> Path:
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    # A byte-level BPE like Qwen's own (transformers rebuilds a Qwen2 tokenizer around the
    # saved vocab and merges), trained on the item texts: nothing is downloaded.
    bpe = ByteLevelBPETokenizer()
    corpus = [*texts, "history: candidates: best: ;", " ".join("ABCDEFGHIJKLMNOPQRSTUVWXYZ")]
    bpe.train_from_iterator(
        corpus,
        vocab_size=min(shape["vocab_size"] - 10, 8000),
        special_tokens=["<|endoftext|>", "<|pad|>"],
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|pad|>"
    )
    cfg = Qwen2Config(**shape, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--train-steps", type=int, default=20)
    args = p.parse_args()

    import torch

    from training.reranker.examples import Row
    from training.reranker.model import (
        RerankerConfig,
        build_model,
        inspect_base,
        load_tokenizer,
        make_renderer,
    )
    from training.reranker.prompt import PromptTemplate
    from training.reranker.scoring import RowScorer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(3000)]
    texts = [" ".join(rng.choice(vocab, 8)) for _ in range(2000)]
    out: dict = {
        "machine": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv),
        "shape": "tiny" if args.tiny else "qwen2-0.5b",
        "device": device,
    }
    with tempfile.TemporaryDirectory() as tmp:
        base = build(Path(tmp) / "lm", TINY if args.tiny else QWEN2_05B, texts)
        cfg = RerankerConfig(
            base_model=str(base), template=PromptTemplate(candidates=20, item_tokens=12)
        )
        info = inspect_base(str(base))
        tok = load_tokenizer(info)
        renderer = make_renderer(info, tok, cfg.template, texts)
        n_feat = 22
        model = build_model(cfg, info, n_feat, renderer.index_ids).to(device)
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model.lm.to(dtype)
        scorer = RowScorer(model, renderer, tok.pad_token_id, True, 20)

        def rows(n: int) -> list[Row]:
            return [
                Row(
                    -1,
                    rng.integers(0, 2000, 10),
                    rng.permutation(2000)[:20],
                    rng.normal(size=(20, n_feat)).astype(np.float32),
                    int(rng.integers(0, 20)),
                )
                for _ in range(n)
            ]

        out["prompt_tokens"] = len(
            renderer.render(rows(1)[0].history, rows(1)[0].candidates).input_ids
        )
        model.eval()
        out["latency"] = {}
        for b in (1, 8, 32):
            batch = rows(b)
            scorer.scores(batch, batch_size=b)  # warm-up
            ms = []
            for _ in range(args.repeats):
                if device == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                scorer.scores(batch, batch_size=b)
                if device == "cuda":
                    torch.cuda.synchronize()
                ms.append((time.perf_counter() - t) * 1000)
            out["latency"][b] = {
                "p50_ms_per_batch": float(np.percentile(ms, 50)),
                "p50_ms_per_request": float(np.percentile(ms, 50)) / b,
            }
        model.train()
        opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
        batch_size, seen = 16, 0
        t = None
        for step in range(args.train_steps + 2):
            if step == 2:  # after warm-up
                if device == "cuda":
                    torch.cuda.synchronize()
                t, seen = time.perf_counter(), 0
            b = scorer.batch(rows(batch_size), labels=True)
            ts = {k: v.to(device) for k, v in b.tensors.items()}
            with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                loss = torch.nn.functional.cross_entropy(model(**ts).float(), b.labels.to(device))
            loss.backward()
            opt.step()
            opt.zero_grad()
            seen += batch_size
        if device == "cuda":
            torch.cuda.synchronize()
        out["train_examples_per_s"] = seen / (time.perf_counter() - t)
    print_table(out)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "gpu_reranker_tiny.json" if args.tiny else "gpu_reranker.json"
    (RESULTS / name).write_text(json.dumps(out, indent=2))


def print_table(out: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{out['shape']} ranker on {out['machine'] or out['device']}, "
        f"{out['prompt_tokens']}-token prompts, K = 20"
    )
    for c in ("batch", "p50 ms per batch", "p50 ms per request"):
        table.add_column(c, justify="right")
    for b, v in out["latency"].items():
        table.add_row(str(b), f"{v['p50_ms_per_batch']:.1f}", f"{v['p50_ms_per_request']:.2f}")
    console = Console()
    console.print(table)
    console.print(f"training: {out['train_examples_per_s']:.1f} examples/s (batch 16)")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
