"""LoRA fine-tuning of the listwise re-ranker with Ray Train.

The driver builds the examples (pure numpy, from the dataset artifact and the retrieval
stack) and hands them to a `TorchTrainer` as Ray Datasets; every worker runs `train_loop`:
DDP across workers, the training examples sharded by Ray Data, listwise softmax
cross-entropy, gradient accumulation, bf16 autocast on GPU, a checkpoint per epoch holding
only the adapter and heads, resume from the last checkpoint, and early stopping on
validation NDCG@10. The best checkpoint is published as the re-ranker artifact.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipelines.errors import LlmrecError
from training.evaluation.metrics import metrics_from_ranks
from training.reranker.examples import Row
from training.reranker.features import feature_names
from training.reranker.model import (
    RerankerConfig,
    RerankerError,
    build_model,
    inspect_base,
    load_tokenizer,
    load_weights,
    make_renderer,
    save_reranker,
)
from training.reranker.prepared import PreparedData
from training.reranker.private_training import (
    DpPlan,
    composed,
    dp_optimizer,
    dp_step,
    one_per_user,
    plan_dp,
    poisson_batches,
)
from training.reranker.prompt import index_token_ids
from training.reranker.runs import check_resumable
from training.reranker.settings import TrainSettings

VAL_METRIC = "val_ndcg10"


# -- the per-worker loop -----------------------------------------------------------------


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from tqdm.auto import tqdm

    from training.reranker.scoring import RowScorer, label_ranks

    s = TrainSettings.model_validate(config["settings"])
    cfg = RerankerConfig.model_validate(config["reranker"])
    torch.set_num_threads(cfg.threads or s.cpus_per_worker)
    torch.manual_seed(s.seed)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    n_features = len(config["features"])

    info = inspect_base(cfg.base_path()) if cfg.mode != "features" else None
    renderer, pad_id, index_ids = None, 0, None
    if info is not None:
        tok = load_tokenizer(info)
        renderer = make_renderer(info, tok, cfg.template, config["item_texts"])
        pad_id, index_ids = tok.pad_token_id, renderer.index_ids
    model = build_model(cfg, info, n_features, index_ids)

    if config.get("init_features"):
        heads = torch.load(io.BytesIO(config["init_features"]), weights_only=True)
        model.load_state_dict(heads, strict=False)
    if config.get("init_weights"):  # a warm start: the live version's adapter and heads
        with tempfile.TemporaryDirectory() as d:
            for name, blob in config["init_weights"].items():
                (Path(d) / name).parent.mkdir(parents=True, exist_ok=True)
                (Path(d) / name).write_bytes(blob)
            load_weights(model, d)
    state = {"epoch": 0, "best": -1.0, "stale": 0, "history": []}
    ckpt = ray.train.get_checkpoint()
    opt_state = None
    if ckpt is not None:
        with ckpt.as_directory() as d:
            load_weights(model, d)
            saved = torch.load(Path(d) / "train_state.pt", map_location="cpu", weights_only=False)
        state, opt_state = saved["state"], saved["optimizer"]

    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    inner = getattr(model, "module", model)
    lora = [p for n, p in inner.named_parameters() if p.requires_grad and n.startswith("lm.")]
    heads = [p for n, p in inner.named_parameters() if p.requires_grad and not n.startswith("lm.")]
    groups = [{"params": heads, "lr": s.lr_heads}]
    if lora:
        groups.append({"params": lora, "lr": s.lr_lora})
    opt = torch.optim.AdamW(groups, weight_decay=s.weight_decay)
    plan = DpPlan.from_json(config["dp"]) if config.get("dp") else None
    if plan is not None:
        opt = dp_optimizer(opt, plan, s.seed)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    autocast = s.use_gpu and s.bf16 and device.type == "cuda"

    k = cfg.template.candidates
    causal = info is not None and info.kind == "causal"
    scorer = RowScorer(model, renderer, pad_id, causal, k)
    shard = ray.train.get_dataset_shard("train")
    val_rows = [Row.from_dict(r, n_features) for r in config["val_rows"]][rank::world]
    dp_rows: list[Row] = []
    if plan is not None:  # Poisson sampling draws from every record: hold them all
        for frame in shard.iter_batches(batch_size=1024, batch_format="pandas"):
            dp_rows += [Row.from_dict(r, n_features) for r in frame.to_dict("records")]

    def loss_of(rows: list[Row]):
        b = scorer.batch(rows, labels=True)
        t = {key: v.to(device) for key, v in b.tensors.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(**t)
        return torch.nn.functional.cross_entropy(out.float(), b.labels.to(device))

    for epoch in range(state["epoch"], s.epochs):
        model.train()
        start, losses, seen = time.perf_counter(), [], 0
        batches = shard.iter_batches(
            batch_size=s.batch_size,
            batch_format="pandas",
            local_shuffle_buffer_size=4 * s.batch_size,
            local_shuffle_seed=s.seed + epoch,
        )
        bar = tqdm(desc=f"epoch {epoch}", unit="ex", disable=rank != 0, mininterval=10)
        opt.zero_grad()
        if plan is not None:
            params = [p for g in opt.param_groups for p in g["params"]]
            for idx in poisson_batches(len(dp_rows), plan, s.seed + epoch):
                chosen = [dp_rows[i] for i in idx]
                losses += dp_step(opt, params, chosen, lambda r: loss_of([r]))
                seen += len(chosen)
                bar.update(len(chosen))
            batches = iter(())
        for step, frame in enumerate(batches):
            if s.max_steps_per_epoch is not None and step >= s.max_steps_per_epoch:
                break
            rows = [Row.from_dict(r, n_features) for r in frame.to_dict("records")]
            loss = loss_of(rows)
            (loss / s.grad_accum).backward()
            if (step + 1) % s.grad_accum == 0:
                opt.step()
                opt.zero_grad()
            losses.append(float(loss))
            seen += len(rows)
            bar.update(len(rows))
        bar.close()
        train_seconds = time.perf_counter() - start

        model.eval()
        ranks = label_ranks(val_rows, scorer.scores(val_rows), miss=k + 1)
        totals = torch.tensor(
            [
                float(metrics_from_ranks(ranks)["NDCG@10"].sum()),
                float(sum(losses)),
                float(len(losses)),
                float(seen),
            ],
            dtype=torch.float64,
        )
        if world > 1:
            dist.all_reduce(totals)
        val_ndcg = float(totals[0]) / config["val_total"]
        metrics = {
            "epoch": epoch,
            "train_loss": float(totals[1] / max(totals[2], 1)),
            VAL_METRIC: val_ndcg,
            "examples": int(totals[3]),
            "examples_per_s": float(totals[3]) / max(train_seconds, 1e-9),
            "train_seconds": train_seconds,
        }
        improved = val_ndcg > state["best"]
        state = {
            "epoch": epoch + 1,
            "best": max(val_ndcg, state["best"]),
            "stale": 0 if improved else state["stale"] + 1,
            "history": state["history"] + [metrics],
        }
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                meta = dict(config["meta"], metrics=metrics, history=state["history"])
                save_reranker(model, d, meta)
                torch.save(
                    {"state": state, "optimizer": opt.state_dict()}, Path(d) / "train_state.pt"
                )
                checkpoint = ray.train.Checkpoint.from_directory(d)
                print(json.dumps(metrics), flush=True)
            ray.train.report(metrics, checkpoint=checkpoint)
        # Under DP the epochs are fixed: validation must not choose what is released.
        if state["stale"] >= s.patience and plan is None:
            break


def feature_layer_bytes(folder: Path, features: list[str]) -> bytes:
    """The feature layer of a trained re-ranker, serialised on the driver: workers on other
    nodes cannot read the driver's folders."""
    import torch

    from training.reranker.model import read_meta

    meta = read_meta(folder)
    if meta["features"] != features:
        raise RerankerError(f"'{folder}' was trained on other features; cannot start from it")
    heads = torch.load(folder / "heads.pt", map_location="cpu", weights_only=True)
    buf = io.BytesIO()
    torch.save({k: v for k, v in heads.items() if k.startswith("features.")}, buf)
    return buf.getvalue()


def checkpoint_files(folder: Path, meta: dict[str, Any]) -> dict[str, bytes]:
    """A trained re-ranker's adapter and heads as bytes (relative path -> content), for a
    warm start on workers that cannot read the driver's folders. It must match the run:
    same mode, base model, template and features."""
    from training.reranker.model import read_meta

    old = read_meta(folder)
    for key in ("features", "base_fingerprint"):
        if old.get(key) != meta.get(key):
            raise RerankerError(f"'{folder}' differs in {key}; cannot warm-start from it")
    if old["config"]["mode"] != meta["config"]["mode"]:
        raise RerankerError(
            f"'{folder}' is a {old['config']['mode']} re-ranker; cannot start from it"
        )
    files = [folder / "heads.pt", *sorted((folder / "adapter").glob("*"))]
    return {str(f.relative_to(folder)): f.read_bytes() for f in files if f.is_file()}


# -- the driver --------------------------------------------------------------------------


@dataclass
class TrainResult:
    path: str
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    seconds: float


def check_config(cfg: RerankerConfig, item_texts: list[str]) -> dict[str, Any]:
    """Every check that can fail before training starts: base model, tokenizer, template.
    Returns the metadata saved with every checkpoint."""
    meta: dict[str, Any] = {"config": cfg.model_dump(mode="json")}
    if cfg.mode == "features":
        return meta | {"base_model": None, "base_fingerprint": None, "kind": None}
    info = inspect_base(cfg.base_path())
    tok = load_tokenizer(info)
    index_token_ids(tok, cfg.template.candidates)
    make_renderer(info, tok, cfg.template, item_texts[:1])
    return meta | {
        "base_model": info.path,
        "base_fingerprint": info.fingerprint,
        "kind": info.kind,
        "model_type": info.model_type,
        "index_ids": index_token_ids(tok, cfg.template.candidates),
        "template_fingerprint": cfg.template.fingerprint(),
    }


def train_reranker(
    prepared: PreparedData,
    cfg: RerankerConfig,
    settings: TrainSettings,
    out: str | Path,
    storage: str | Path,
    name: str,
) -> TrainResult:
    """Run the TorchTrainer; re-running with the same `storage` and `name` resumes."""
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    plan = None
    if settings.dp_epsilon is not None:  # one record per user, before the cap picks users
        prepared = replace(prepared, train=one_per_user(prepared.train, settings.seed))
    if cfg.mode != "features":
        prepared = prepared.capped(settings)
    if settings.dp_epsilon is not None:
        plan = plan_dp(
            len(prepared.train),
            settings.dp_epsilon,
            settings.dp_delta,
            settings.dp_max_grad_norm,
            settings.dp_batch_size,
            settings.epochs,
        )
    if not prepared.train:
        raise LlmrecError("no training examples: the dataset is too small for the re-ranker")
    # Workers do not run in this process's working directory: hand them absolute paths.
    if cfg.base_model and Path(cfg.base_model).exists():
        cfg = cfg.model_copy(update={"base_model": str(Path(cfg.base_model).resolve())})
    meta = check_config(cfg, prepared.item_texts)
    meta |= {
        "features": feature_names(prepared.sources),
        "sources": prepared.sources,
        "dataset_version": prepared.dataset_version,
        "fusion": prepared.fusion,
        "settings": settings.model_dump(mode="json"),
        # What the trained parameters spent (None: trained without differential privacy).
        "privacy": _privacy(plan, cfg, settings),
    }
    check_resumable(storage, name, cfg, meta)
    ray.data.DataContext.get_current().enable_progress_bars = False
    train_ds = ray.data.from_items([r.to_dict() for r in prepared.train])
    if settings.workers > 1:
        # Equal shards need at least one block per worker.
        train_ds = train_ds.repartition(settings.workers * 4)
    # Built now, while the CPUs are free: once the workers hold every CPU of a small
    # cluster (2 workers x 1 CPU on 2 cores), a lazy dataset's tasks never get scheduled
    # and training waits forever.
    train_ds = train_ds.materialize()
    config = {
        "settings": settings.model_dump(mode="json"),
        "reranker": cfg.model_dump(mode="json"),
        "features": meta["features"],
        "item_texts": prepared.item_texts,
        "val_rows": [r.to_dict() for r in prepared.val],
        "val_total": max(prepared.val_total, 1),
        "meta": meta,
        "dp": plan.to_json() if plan is not None else None,
        "init_features": (
            feature_layer_bytes(Path(settings.init_features_from), meta["features"])
            if settings.init_features_from
            else None
        ),
        "init_weights": (
            checkpoint_files(Path(settings.init_from), meta) if settings.init_from else None
        ),
    }
    resources = {"CPU": settings.cpus_per_worker}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=settings.workers, use_gpu=settings.use_gpu, resources_per_worker=resources
        ),
        datasets={"train": train_ds},
        dataset_config=DataConfig(datasets_to_split=["train"]),
        run_config=RunConfig(
            name=name,
            # A URI (s3://, gs://) is handed to Ray Train as it is: every worker reaches it.
            storage_path=storage if "://" in str(storage) else str(Path(storage).resolve()),
            checkpoint_config=CheckpointConfig(num_to_keep=None),
        ),
    )
    start = time.perf_counter()
    try:
        result = trainer.fit()
    except Exception as e:
        raise RerankerError(f"training failed: {_root_cause(e)}") from None
    if result.error is not None:
        raise RerankerError(f"training failed: {_root_cause(result.error)}")
    # Under DP the last epoch is released: choosing by validation would spend privacy.
    best = result.checkpoint if plan else result.get_best_checkpoint(metric=VAL_METRIC, mode="max")
    if best is None:
        raise RerankerError("training reported no checkpoint")
    target = Path(out)
    with best.as_directory() as d:
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(d, tmp, ignore=shutil.ignore_patterns("train_state.pt"))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    if prepared.routing and cfg.mode == "hybrid":
        from training.reranker.evaluate import measure_routing

        miss = len(prepared.item_texts) + 1
        table = measure_routing(
            target, prepared.routing, prepared.routing_lengths, prepared.item_texts, miss
        )
        table.save(target)
    saved = json.loads((target / "reranker.json").read_text())
    history = saved["history"]
    if result.checkpoint is not None:  # the latest one holds every epoch's metrics
        with result.checkpoint.as_directory() as d:
            history = json.loads((Path(d) / "reranker.json").read_text())["history"]
    return TrainResult(str(target), saved["metrics"], history, time.perf_counter() - start)


def _privacy(plan: DpPlan | None, cfg: RerankerConfig, settings: TrainSettings) -> dict | None:
    if plan is None:
        return None
    earlier = None
    if settings.init_features_from:
        from training.reranker.model import read_meta

        earlier = read_meta(settings.init_features_from).get("privacy")
        if earlier is None:
            raise RerankerError(
                f"'{settings.init_features_from}' was trained without differential privacy: "
                "under --dp-epsilon the feature layer must come from a run with it (or none)"
            )
    return composed(plan, earlier, cfg.mode)


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    return f"{type(e).__name__}: {e}".splitlines()[0]
