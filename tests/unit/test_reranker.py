"""The re-ranker without Ray: prompt rendering, index tokens, model kinds, checkpoints,
refusals, and training examples."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipelines.errors import ArtifactError
from tests.tiny_models import tiny_causal, tiny_encoder, word_tokenizer
from training.candidates import Candidates
from training.reranker.examples import Row, training_rows
from training.reranker.features import candidate_features, feature_names
from training.reranker.model import (
    RerankerConfig,
    RerankerError,
    build_model,
    collate,
    inspect_base,
    load_reranker,
    load_tokenizer,
    make_renderer,
    save_reranker,
)
from training.reranker.prompt import PromptError, PromptTemplate, index_token_ids
from training.reranker.scoring import RowScorer, label_ranks

TEXTS = [f"Movie {w} ({1990 + i}) genres: drama, comedy" for i, w in enumerate("abcdefghij")]
TEMPLATE = PromptTemplate(candidates=5, history_items=3, item_tokens=4)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    return {
        "causal": str(tiny_causal(root / "causal", TEXTS)),
        "encoder": str(tiny_encoder(root / "encoder")),
    }


def _parts(path: str, template: PromptTemplate = TEMPLATE):
    info = inspect_base(path)
    tok = load_tokenizer(info)
    return info, tok, make_renderer(info, tok, template, TEXTS)


@pytest.mark.parametrize("kind", ["causal", "encoder"])
def test_prompt_is_bounded_and_markers_hold_the_index_tokens(models, kind):
    info, _, r = _parts(models[kind])
    assert info.kind == kind
    long_history = list(range(10)) * 20
    out = r.render(long_history, [4, 2, 7])
    assert len(out.input_ids) <= r.max_length
    assert [out.input_ids[m] for m in out.markers] == r.index_ids[:3]
    # Only the 3 most recent history items are shown, each cut to 4 tokens.
    short = r.render([7, 8, 9], [4, 2, 7])
    assert out.input_ids == short.input_ids
    assert len(set(r.index_ids)) == TEMPLATE.candidates
    if kind == "causal":  # the next token after "best:" is what a causal LM scores
        assert r.text([1], [2]).rstrip().endswith("best :")


def test_too_many_candidates_for_the_template_is_refused(models):
    _, _, r = _parts(models["encoder"])
    with pytest.raises(PromptError, match="template holds 5"):
        r.render([1], list(range(6)))


def test_k_beyond_the_alphabet_and_a_tokenizer_without_room(models):
    with pytest.raises(PromptError, match="index alphabet"):
        index_token_ids(load_tokenizer(inspect_base(models["causal"])), 100)
    tok = word_tokenizer(["movie"], letters="ABC")
    with pytest.raises(PromptError, match="only 3 distinct"):
        index_token_ids(tok, 5)


def test_a_prompt_longer_than_the_model_takes_is_refused(models):
    info = inspect_base(models["encoder"])
    big = PromptTemplate(candidates=30, history_items=100, item_tokens=64)
    with pytest.raises(RerankerError, match="lower candidates"):
        make_renderer(info, load_tokenizer(info), big, TEXTS)


def test_bad_base_models_are_refused_with_a_clear_message(tmp_path):
    with pytest.raises(RerankerError, match="not a folder"):
        inspect_base(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RerankerError, match=r"no config\.json"):
        inspect_base(str(tmp_path / "empty"))
    vit = tmp_path / "vit"
    vit.mkdir()
    (vit / "config.json").write_text(json.dumps({"model_type": "vit", "architectures": ["ViT"]}))
    with pytest.raises(RerankerError, match="neither a causal LM"):
        inspect_base(str(vit))
    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5", "is_encoder_decoder": True}))
    with pytest.raises(RerankerError, match="encoder-decoder"):
        inspect_base(str(t5))


def _rows(n: int, k: int = 5, f: int = 3, seed: int = 0) -> list[Row]:
    rng = np.random.default_rng(seed)
    return [
        Row(
            i,
            rng.integers(0, 10, 4),
            rng.permutation(10)[:k],
            rng.normal(size=(k, f)).astype(np.float32),
            int(rng.integers(0, k)),
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("kind", ["causal", "encoder"])
@pytest.mark.parametrize("mode", ["hybrid", "lm"])
def test_checkpoint_round_trips_to_identical_scores(models, kind, mode, tmp_path):
    info, tok, r = _parts(models[kind])
    cfg = RerankerConfig(base_model=models[kind], mode=mode, template=TEMPLATE)
    torch.manual_seed(0)
    model = build_model(cfg, info, 3, r.index_ids)
    # Move every trainable weight off its initial value, as training would.
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    scorer = RowScorer(model.eval(), r, tok.pad_token_id, kind == "causal", 5)
    rows = _rows(6)
    before = scorer.scores(rows, batch_size=4)
    meta = {
        "config": cfg.model_dump(mode="json"),
        "base_model": info.path,
        "base_fingerprint": info.fingerprint,
        "index_ids": r.index_ids,
        "features": ["a", "b", "c"],
    }
    save_reranker(model, tmp_path / "ck", meta)
    assert (tmp_path / "ck" / "adapter").is_dir()
    loaded, _, _ = load_reranker(tmp_path / "ck")
    after = RowScorer(loaded, r, tok.pad_token_id, kind == "causal", 5).scores(rows, batch_size=3)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert len({float(x) for x in after[0]}) > 1  # the LM tells candidates apart

    other = "encoder" if kind == "causal" else "causal"
    with pytest.raises(RerankerError, match="trained on base model"):
        load_reranker(tmp_path / "ck", base_model=models[other])
    with pytest.raises(RerankerError, match="template"):
        load_reranker(tmp_path / "ck", expected_template=PromptTemplate(candidates=6))


def test_padding_does_not_change_a_prompts_scores(models):
    """Left padding (causal) and right padding (encoder) keep each row's scores."""
    for kind in ("causal", "encoder"):
        info, tok, r = _parts(models[kind])
        cfg = RerankerConfig(base_model=models[kind], mode="lm", template=TEMPLATE)
        torch.manual_seed(1)
        model = build_model(cfg, info, 3, r.index_ids).eval()
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn_like(p))
        scorer = RowScorer(model, r, tok.pad_token_id, kind == "causal", 5)
        rows = _rows(5)
        rows[0].history = np.arange(1)  # much shorter than the others
        alone = scorer.scores(rows[:1], batch_size=1)[0]
        batched = scorer.scores(rows, batch_size=5)[0]
        np.testing.assert_allclose(alone, batched, atol=1e-4)


def test_missing_checkpoint_is_an_artifact_error(tmp_path):
    with pytest.raises(ArtifactError, match=r"reranker\.json missing"):
        load_reranker(tmp_path)


def test_label_ranks_counts_misses_and_breaks_ties_by_fused_order():
    rows = _rows(3)
    rows[2].label = -1
    scores = [np.array([0, 0, 5, 0, 0.0]), np.array([1, 2, 3, 4, 5.0]), np.zeros(5)]
    rows[0].label, rows[1].label = 2, 0
    np.testing.assert_array_equal(label_ranks(rows, scores, miss=99), [1, 5, 99])


def test_features_follow_the_names_and_keep_real_positions():
    n = 4
    c = Candidates(
        items=np.array([3, 1, 2, 0]),
        scores=np.array([3.0, 2.0, 1.0, -1e6]),
        path="warm",
        source_ranks={"t": np.array([1, 0, 2, 5])},
        source_scores={"t": np.array([0.9, -np.inf, 0.5, 0.1])},
    )
    f = candidate_features(c, ["t"], np.log1p(np.arange(4.0)), positions=np.array([0, 1, 2, 90]))
    assert f.shape == (n, len(feature_names(["t"])))
    names = feature_names(["t"])
    assert f[1, names.index("t:rr")] == 0 and f[1, names.index("t:log_rank")] == 1
    assert f[3, names.index("position")] == pytest.approx(1 / 91)
    assert f[3, names.index("fused_z")] == -3  # popularity backfill is no fused score


class _FakeGen:
    """Candidates in a fixed order: 0, 1, 2, ... (whatever the history)."""

    def generate(self, user, history, n=10, exclude=None):
        items = np.array([i for i in range(30) if i not in set(history)][:n])
        return Candidates(
            items=items,
            scores=-np.arange(len(items), dtype=float),
            path="warm",
            source_ranks={"s": np.arange(1, len(items) + 1)},
            source_scores={"s": -np.arange(len(items), dtype=float)},
        )


def test_training_rows_insert_the_true_item_shuffled_without_leaking_it():
    visible = [np.array([0, 1]), np.array([5])]
    hidden = [np.array([25, 3]), np.array([])]
    rows, skipped = training_rows(
        _FakeGen(),
        visible,
        hidden,
        k=4,
        history_items=10,
        sources=["s"],
        log_pop=np.zeros(30),
        seed=0,
        progress=False,
    )
    assert skipped == 0 and len(rows) == 2
    first, second = rows
    assert first.candidates[first.label] == 25 and len(first.candidates) == 4
    assert 25 not in first.history and list(first.history) == [0, 1]
    assert list(second.history) == [0, 1, 25]  # the earlier hidden item is history now
    assert second.candidates[second.label] == 3
    # The true item keeps its real rank in the features (25 was the 24th candidate).
    pos = feature_names(["s"]).index("position")
    assert first.features[first.label, pos] == pytest.approx(1 / 24)
    labels = [
        r.label
        for r in training_rows(
            _FakeGen(),
            [np.array([0])] * 20,
            [np.array([2])] * 20,
            4,
            10,
            ["s"],
            np.zeros(30),
            progress=False,
        )[0]
    ]
    assert len(set(labels)) > 1  # shuffled: the true item is not always in one place
    _ = collate  # collate is exercised through RowScorer above


def test_the_routing_threshold_follows_the_measurement():
    from training.reranker.evaluate import recommend_threshold

    def sl(length, low, high):
        return {"history": length, "low": low, "high": high}

    # significantly worse at 1 and 2 (interval below zero): route below 3
    assert recommend_threshold([sl(1, -0.03, -0.01), sl(2, -0.02, -0.001), sl(5, -0.01, 0.02)]) == 3
    assert recommend_threshold([sl(1, -0.01, 0.01), sl(10, 0.0, 0.03)]) == 0  # never worse


def test_an_lm_trains_on_a_seeded_sample_and_validates_on_sampled_users():
    from training.reranker.prepared import PreparedData
    from training.reranker.settings import TrainSettings

    def row(user: int, label: int) -> Row:
        return Row(user, np.arange(2), np.arange(5), np.zeros((5, 3), np.float32), label)

    prepared = PreparedData(
        train=[row(u % 50, 1) for u in range(300)],
        val=[row(u, 0) for u in range(0, 100, 2)],  # half the users' targets were retrieved
        val_total=100,
        skipped=0,
        item_texts=TEXTS,
        sources=["a"],
        dataset_version="v",
    )
    s = TrainSettings(max_examples=120, val_users=40, seed=3)
    lm = prepared.capped(s)
    assert len(lm.train) == 120 and lm.val_total == 40
    assert {r.user for r in lm.val} < set(range(0, 100, 2)) and 5 < len(lm.val) < 35
    assert [r.user for r in prepared.capped(s).train] == [r.user for r in lm.train]
    assert len(prepared.train) == 300 and prepared.val_total == 100  # untouched
    assert prepared.capped(TrainSettings(max_examples=None, val_users=None)) == prepared


def test_the_default_run_name_tells_incompatible_configs_apart():
    """`llmrec train`'s default run name carries `weights_digest`: another base model, LoRA
    rank or template is another run (resuming it would load weights that do not fit); the
    thread count changes no weight, so the same run resumes."""
    base = RerankerConfig(base_model="minilm")
    same = base.model_copy(update={"threads": 4})
    assert base.weights_digest() == same.weights_digest()
    others = [
        base.model_copy(update={"base_model": "smollm2-135m"}),
        base.model_copy(update={"lora_r": 16}),
        base.model_copy(update={"mode": "features"}),
        base.model_copy(update={"template": TEMPLATE}),
    ]
    assert len({base.weights_digest(), *(c.weights_digest() for c in others)}) == 5


def test_a_run_is_resumed_only_by_the_configuration_that_wrote_it(tmp_path):
    """`check_resumable` reads the run's newest checkpoint: the same configuration (threads
    aside) resumes; another base model or feature set is a clear error before training."""
    from training.reranker.runs import check_resumable

    cfg = RerankerConfig(base_model="minilm", threads=2)
    meta = {"config": cfg.model_dump(mode="json"), "features": ["a", "b"]}
    check_resumable(tmp_path, "run", cfg, meta)  # no run yet
    ckpt = tmp_path / "run" / "trial" / "checkpoint_000000"
    ckpt.mkdir(parents=True)
    (ckpt / "reranker.json").write_text(json.dumps(meta))
    check_resumable(tmp_path, "run", cfg.model_copy(update={"threads": 8}), meta)
    smol = cfg.model_copy(update={"base_model": "smollm2-135m"})
    with pytest.raises(RerankerError, match="differs in base_model"):
        check_resumable(tmp_path, "run", smol, meta)
    with pytest.raises(RerankerError, match="differs in features"):
        check_resumable(tmp_path, "run", cfg, meta | {"features": ["a"]})
    check_resumable("s3://bucket/runs", "run", smol, meta)  # not looked into
