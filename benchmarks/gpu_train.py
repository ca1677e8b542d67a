"""Re-ranker training on a lent GPU machine, through the same Ray Train code as `llmrec train`.

A lent GPU machine may have neither `implicit` nor a network. So the examples (the retrieval
stack's candidate lists and features) and the stage-1 feature layer are built on a machine
with the full install and carried over as files; the LoRA stage runs on the GPU machine with
`use_gpu=True` (bf16 autocast, one GPU per worker).

    # on the full install (CPU): examples with `--holdout` positions per user, then stage 1
    python benchmarks/gpu_train.py build --holdout 20 --out /tmp/gpu/examples.pkl.gz
    python benchmarks/gpu_train.py features --examples /tmp/gpu/examples.pkl.gz --out DIR
    # on the GPU machine: one run per --run NAME:MAX_EXAMPLES:EPOCHS:BATCH (0 = all examples)
    python benchmarks/gpu_train.py train --examples ... --init-features DIR --gpu \\
        --run default:3000:1:8 --run all:0:6:16 --out OUTDIR

Each run writes OUTDIR/<name>/ (the best checkpoint, loadable by `llmrec eval --reranker`)
and one JSON with every epoch's loss, validation NDCG@10, examples/s and seconds.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pickle
import platform
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass
class RunSpec:
    name: str
    max_examples: int | None
    epochs: int
    batch_size: int

    @classmethod
    def parse(cls, text: str) -> RunSpec:
        try:
            name, n, epochs, batch = text.split(":")
            return cls(name, int(n) or None, int(epochs), int(batch))
        except ValueError:
            raise SystemExit(f"--run takes NAME:MAX_EXAMPLES:EPOCHS:BATCH, got {text!r}") from None


def build(args: argparse.Namespace) -> None:
    from pipelines.artifact import load_dataset
    from training.reranker.model import RerankerConfig
    from training.reranker.prepared import prepare_examples
    from training.reranker.train import TrainSettings

    ds = load_dataset(args.data, expected_name="ml-100k")
    start = time.perf_counter()
    prepared = prepare_examples(ds, RerankerConfig(), TrainSettings(holdout=args.holdout))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(args.out, "wb", compresslevel=6) as f:
        pickle.dump(prepared, f, protocol=pickle.HIGHEST_PROTOCOL)
    print(
        f"{len(prepared.train)} training rows (holdout {args.holdout}, {prepared.skipped} "
        f"skipped), {len(prepared.val)}/{prepared.val_total} validation rows with their "
        f"target; {time.perf_counter() - start:.0f} s -> {args.out} "
        f"({Path(args.out).stat().st_size / 1e6:.1f} MB)"
    )


def load_prepared(path: str):
    with gzip.open(path, "rb") as f:
        return pickle.load(f)


def features(args: argparse.Namespace) -> None:
    from cluster.ray_runtime import connect
    from training.reranker.model import RerankerConfig
    from training.reranker.recipe import FEATURE_STAGE
    from training.reranker.train import TrainSettings, train_reranker

    prepared = load_prepared(args.examples)
    connect(num_cpus=args.cpus)
    # The settings of `llmrec train`'s stage 1.
    settings = TrainSettings(cpus_per_worker=args.cpus).model_copy(update=FEATURE_STAGE)
    result = train_reranker(
        prepared,
        RerankerConfig(mode="features"),
        settings,
        args.out,
        args.storage,
        f"gpu-bench-features-{int(time.time())}",
    )
    best = max(h["val_ndcg10"] for h in result.history)
    print(f"feature layer: val NDCG@10 {best:.4f}, {result.seconds:.0f} s -> {result.path}")


def train(args: argparse.Namespace) -> None:
    import torch
    from rich.console import Console
    from rich.table import Table

    from cluster.ray_runtime import connect
    from training.reranker.model import RerankerConfig
    from training.reranker.train import TrainSettings, train_reranker

    prepared = load_prepared(args.examples)
    cpus = args.cpus or os.cpu_count() or 2
    if args.gpu:
        import ray

        # Named, not detected: a GPU that Ray misses leaves the trainer waiting forever.
        ray.init(num_cpus=cpus, num_gpus=torch.cuda.device_count(), include_dashboard=False)
    connect(num_cpus=cpus)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if args.gpu else platform.processor() or "CPU"
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": device,
        "cpus": cpus,
        "training_rows": len(prepared.train),
        "val_users": prepared.val_total,
        "runs": [],
    }
    table = Table(title=f"re-ranker training on {device}")
    for c in ("run", "epoch", "examples", "train loss", "val NDCG@10", "examples/s", "seconds"):
        table.add_column(c, justify="right")
    for spec in [RunSpec.parse(r) for r in args.run]:
        settings = TrainSettings(
            epochs=spec.epochs,
            batch_size=spec.batch_size,
            # `llmrec train`'s defaults (TrainSettings'), so a run here is the CLI's on a GPU
            max_examples=spec.max_examples,
            val_users=args.val_users or None,
            patience=args.patience,
            cpus_per_worker=min(cpus, 8),
            use_gpu=args.gpu,
            init_features_from=args.init_features,
        )
        result = train_reranker(
            prepared,
            RerankerConfig(),
            settings,
            out / spec.name,
            args.storage,
            f"gpu-bench-{spec.name}-{int(time.time())}",
        )
        for h in result.history:
            table.add_row(
                spec.name,
                str(h["epoch"]),
                str(h["examples"]),
                f"{h['train_loss']:.4f}",
                f"{h['val_ndcg10']:.4f}",
                f"{h['examples_per_s']:.1f}",
                f"{h['train_seconds']:.1f}",
            )
        run = {"spec": asdict(spec), "seconds_in_ray_train": result.seconds}
        report["runs"].append(run | {"history": result.history})
        (out / "gpu_train.json").write_text(json.dumps(report, indent=2))
    Console().print(table)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="examples from the dataset artifact (needs implicit)")
    b.add_argument("--data", default="artifacts/datasets/ml-100k")
    b.add_argument("--holdout", type=int, default=10)
    b.add_argument("--out", required=True)
    f = sub.add_parser("features", help="stage 1: the feature layer alone (CPU)")
    f.add_argument("--examples", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--cpus", type=int, default=2)
    f.add_argument("--storage", default="/tmp/gpu-bench-runs")
    t = sub.add_parser("train", help="stage 2: LoRA + feature layer, one run per --run")
    t.add_argument("--examples", required=True)
    t.add_argument("--init-features", required=True)
    t.add_argument("--run", action="append", required=True)
    t.add_argument("--gpu", action="store_true")
    t.add_argument("--cpus", type=int, default=None)
    t.add_argument("--val-users", type=int, default=0, help="0: every validation user")
    t.add_argument("--patience", type=int, default=2)
    t.add_argument("--storage", default="/tmp/gpu-bench-runs")
    t.add_argument("--out", default="artifacts/rerankers/ml-100k/gpu-bench")
    args = p.parse_args()
    {"build": build, "features": features, "train": train}[args.cmd](args)


if __name__ == "__main__":
    main()
