"""The text-embedding cache: a refit encodes only texts it has not seen, and the vectors it
returns are the ones the model computes."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.tiny_models import tiny_encoder
from training.retrieval.embeddings import TextEncoder


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return str(tiny_encoder(tmp_path_factory.mktemp("enc")))


def test_a_second_encoder_reads_every_vector_from_the_cache(model_path, tmp_path):
    texts = ["A story of ka and lo.", "The Mi Ren 2", "A story of ka and lo.", "zo"]
    first = TextEncoder(model_path, cache=tmp_path)
    a = first.encode(texts)
    assert first.encoded == 3  # the repeated text is encoded once
    uncached = TextEncoder(model_path, cache=False).encode(texts)
    np.testing.assert_allclose(a, uncached, atol=1e-5)

    second = TextEncoder(model_path, cache=tmp_path)
    b = second.encode(texts)
    assert second.encoded == 0
    np.testing.assert_array_equal(a, b)


def test_only_new_or_changed_texts_are_encoded_again(model_path, tmp_path):
    TextEncoder(model_path, cache=tmp_path).encode(["one", "two", "three"])
    again = TextEncoder(model_path, cache=tmp_path)
    out = again.encode(["one", "two (changed)", "three", "four"])
    assert again.encoded == 2 and out.shape[0] == 4


def test_the_cache_is_per_model_and_token_limit(model_path, tmp_path):
    TextEncoder(model_path, cache=tmp_path).encode(["one"])
    shorter = TextEncoder(model_path, max_tokens=4, cache=tmp_path)
    shorter.encode(["one"])
    assert shorter.encoded == 1


def test_an_unwritable_cache_still_encodes(model_path, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    enc = TextEncoder(model_path, cache=blocked)
    assert enc.encode(["one", "two"]).shape[0] == 2
    assert TextEncoder(model_path, cache=False).encode([]).shape[0] == 0


def test_the_same_model_installed_elsewhere_reads_the_same_cache(model_path, tmp_path):
    """A new virtualenv (or machine) puts the same model in another folder: the cache is
    keyed by the model's files, so a refit there encodes nothing again; other weights miss."""
    TextEncoder(model_path, cache=tmp_path / "cache").encode(["one", "two"])
    moved = tmp_path / "elsewhere"
    shutil.copytree(model_path, moved)
    again = TextEncoder(str(moved), cache=tmp_path / "cache")
    again.encode(["one", "two"])
    assert again.encoded == 0

    config = moved / "config.json"
    config.write_text(config.read_text().replace("}", ', "changed": 1}', 1))
    changed = TextEncoder(str(moved), cache=tmp_path / "cache")
    changed.encode(["one"])
    assert changed.encoded == 1
