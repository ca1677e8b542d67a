"""The listwise re-ranker: a Hugging Face LM (LoRA-adapted) scores K candidates in one forward
pass, and a small layer adds what retrieval knows about each candidate (the hybrid).

- causal LM (GPT-2, Qwen, Llama, ...): a candidate's score is the next-token logit of its
  index token after the prompt (the LlamaRec verbalizer);
- encoder LM (BERT-like, the default offline MiniLM): a linear head reads the hidden state
  at each candidate's index token.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipelines.errors import ArtifactError, LlmrecError
from training.reranker.prompt import PromptRenderer, PromptTemplate, Rendered

Mode = Literal["hybrid", "lm", "features"]
Kind = Literal["encoder", "causal"]
FORMAT = 1
MASKED = -1e4  # the score of a padded candidate slot (finite: keeps softmax NaN-free)

ENCODER_TYPES = {
    "bert",
    "roberta",
    "xlm-roberta",
    "distilbert",
    "deberta",
    "deberta-v2",
    "electra",
    "mpnet",
    "albert",
    "modernbert",
}
DROPOUT_KEYS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "attention_dropout",
    "hidden_dropout",
    "dropout",
    "classifier_dropout",
)


class RerankerError(LlmrecError):
    """A base model, adapter or setting the re-ranker cannot work with."""


class RerankerConfig(BaseModel):
    """What to build; saved with every checkpoint."""

    model_config = ConfigDict(extra="forbid")

    base_model: str | None = Field(
        None,
        description="HF model folder, URI, or a named offline model: minilm, smollm2-135m "
        "[default: minilm]",
    )
    mode: Mode = "hybrid"
    template: PromptTemplate = PromptTemplate()
    lora_r: int = Field(8, ge=1, le=256)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | None = Field(
        None, description="LoRA targets [default: peft's choice for the model family]"
    )
    layers: int | None = Field(
        None, ge=1, description="keep only the first N transformer blocks (a faster CPU ranker)"
    )
    feature_hidden: int = Field(32, ge=1, le=1024)
    threads: int | None = Field(None, ge=1, description="torch threads per process")

    def weights_digest(self) -> str:
        """A hash of what the trained weights depend on (every field but `threads`): the
        default run name carries it, so a run of another model or template is a new run,
        never a resume of an incompatible checkpoint."""
        return hashlib.sha256(self.model_dump_json(exclude={"threads"}).encode()).hexdigest()[:8]

    def base_path(self) -> str:
        """A local folder: a named model (smollm2-135m) is fetched and a base model at a URI
        (s3://, gs://) copied, once per machine (training/base_models.py)."""
        from training.base_models import resolve

        return resolve(self.base_model)


@dataclass
class BaseInfo:
    path: str
    kind: Kind
    model_type: str
    fingerprint: str
    max_positions: int | None


def inspect_base(path: str) -> BaseInfo:
    """Check that `path` is a local causal or encoder LM folder; raises a clear error."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = Path(path)
    if not folder.is_dir():
        raise RerankerError(f"base model '{path}' is not a folder (a local HF model folder)")
    cfg_file = folder / "config.json"
    if not cfg_file.exists():
        raise RerankerError(f"'{path}' has no config.json: not a Hugging Face model folder")
    raw = json.loads(cfg_file.read_text())
    model_type = raw.get("model_type", "")
    archs = raw.get("architectures") or []
    if raw.get("is_encoder_decoder"):
        raise RerankerError(
            f"'{path}' is an encoder-decoder ({model_type}); use a causal or encoder LM"
        )
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        kind: Kind = "causal"
    elif model_type in ENCODER_TYPES:
        kind = "encoder"
    else:
        raise RerankerError(
            f"'{path}' ({model_type or 'no model_type'}, {archs or 'no architectures'}) is "
            "neither a causal LM (…ForCausalLM) nor a known encoder LM"
        )
    weights = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    h = hashlib.sha256(cfg_file.read_bytes())
    for p in weights:
        h.update(f"{p.name}:{p.stat().st_size}".encode())
    positions = raw.get("max_position_embeddings") or raw.get("n_positions")
    return BaseInfo(str(folder), kind, model_type, h.hexdigest()[:16], positions)


def load_tokenizer(info: BaseInfo):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(info.path)
    except Exception as e:
        raise RerankerError(f"cannot load a tokenizer from '{info.path}': {e}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def make_renderer(
    info: BaseInfo, tokenizer, template: PromptTemplate, item_texts: list[str]
) -> PromptRenderer:
    renderer = PromptRenderer(template, tokenizer, item_texts, causal=info.kind == "causal")
    if info.max_positions and renderer.max_length > info.max_positions:
        raise RerankerError(
            f"prompts may reach {renderer.max_length} tokens, '{info.path}' takes "
            f"{info.max_positions}: lower candidates, history_items or item_tokens"
        )
    return renderer


def _torch():
    import torch

    return torch


def build_model(
    cfg: RerankerConfig,
    info: BaseInfo | None,
    n_features: int,
    index_ids: list[int] | None = None,
):
    """The trainable module: LoRA-wrapped base (unless mode is 'features') + heads.

    `index_ids` (the renderer's index tokens) are what a causal LM's scores are read from."""
    torch = _torch()
    nn = torch.nn

    class ListwiseRanker(nn.Module):
        def __init__(self):
            super().__init__()
            self.kind = info.kind if info else None
            self.mode = cfg.mode
            self.lm = None
            self.register_buffer("index_ids", torch.tensor(index_ids or []), persistent=False)
            if cfg.mode != "features":
                assert info is not None
                self.lm = _load_lora_base(cfg, info)
                hidden = self.lm.config.hidden_size if info.kind == "encoder" else 1
                self.head = nn.Linear(hidden, 1) if info.kind == "encoder" else None
                # The LM starts silent: a hybrid begins as its feature layer and the LM
                # learns what to add to it.
                if self.head is not None:
                    nn.init.zeros_(self.head.weight)
                    nn.init.zeros_(self.head.bias)
                init_scale = 1.0 if info.kind == "encoder" else 0.0
                self.lm_scale = nn.Parameter(torch.tensor(init_scale))
            if cfg.mode != "lm":
                self.features = nn.Sequential(
                    nn.Linear(n_features, cfg.feature_hidden),
                    nn.ReLU(),
                    nn.Linear(cfg.feature_hidden, 1),
                )

        def forward(self, input_ids, attention_mask, markers, cand_mask, features):
            b, k = cand_mask.shape
            score = torch.zeros(b, k, device=cand_mask.device)
            if self.lm is not None:
                score = score + self.lm_scale * self._lm_scores(input_ids, attention_mask, markers)
            if self.mode != "lm":
                score = score + self.features(features).squeeze(-1)
            return score.masked_fill(~cand_mask, MASKED)

        def _lm_scores(self, input_ids, attention_mask, markers):
            if self.kind == "causal":
                # Left-padded: the last position is every prompt's "best:" token.
                pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
                out = self.lm(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    position_ids=pos,
                    logits_to_keep=1,
                )
                logits = out.logits[:, -1, :].float()
                ids = self.index_ids[: markers.shape[1]]
                return logits[:, ids]
            hidden = self.lm(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            at = markers.clamp(min=0).unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
            return self.head(torch.gather(hidden, 1, at).float()).squeeze(-1)

    model = ListwiseRanker()
    return model


def _load_lora_base(cfg: RerankerConfig, info: BaseInfo):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    hf_cfg = AutoConfig.from_pretrained(info.path)
    # Dropout inside the base model makes every forward ~3.6x slower on CPU and LoRA only
    # trains the adapters: regularise with LoRA dropout instead (docs/RERANKER.md, CPU notes).
    for key in DROPOUT_KEYS:
        if isinstance(getattr(hf_cfg, key, None), float):
            setattr(hf_cfg, key, 0.0)
    if cfg.layers is not None:
        for key in ("num_hidden_layers", "n_layer"):
            if isinstance(getattr(hf_cfg, key, None), int):
                if cfg.layers > getattr(hf_cfg, key):
                    raise RerankerError(
                        f"layers={cfg.layers}, but '{info.path}' has {getattr(hf_cfg, key)}"
                    )
                # The checkpoint's extra blocks are simply not loaded.
                setattr(hf_cfg, key, cfg.layers)
    loader = AutoModelForCausalLM if info.kind == "causal" else AutoModel
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # dropped blocks are reported as "unexpected" keys
    try:
        base = loader.from_pretrained(info.path, config=hf_cfg)
    except Exception as e:
        raise RerankerError(f"cannot load the model in '{info.path}': {e}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules,
        bias="none",
        fan_in_fan_out=info.model_type == "gpt2",  # GPT-2 stores Linear weights transposed
    )
    try:
        return get_peft_model(base, lora)
    except ValueError as e:
        raise RerankerError(
            f"LoRA cannot adapt '{info.path}' ({info.model_type}): {e}; set target_modules"
        ) from None


@dataclass
class Batch:
    tensors: dict[str, Any]
    labels: Any


def collate(
    rendered: list[Rendered],
    features: list[np.ndarray],
    pad_id: int,
    causal: bool,
    k: int,
    labels: list[int] | None = None,
) -> Batch:
    """Pad a list of prompts into tensors (left padding for causal LMs)."""
    torch = _torch()
    n = len(rendered)
    width = max(len(r.input_ids) for r in rendered) if n else 1
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    markers = torch.full((n, k), -1, dtype=torch.long)
    cand = torch.zeros((n, k), dtype=torch.bool)
    n_feat = features[0].shape[-1] if features else 0
    feats = torch.zeros((n, k, n_feat), dtype=torch.float32)
    for i, (r, f) in enumerate(zip(rendered, features, strict=True)):
        length = len(r.input_ids)
        off = width - length if causal else 0
        ids[i, off : off + length] = torch.tensor(r.input_ids)
        mask[i, off : off + length] = 1
        m = len(r.markers)
        markers[i, :m] = torch.tensor(r.markers) + off
        cand[i, :m] = True
        feats[i, :m] = torch.from_numpy(np.asarray(f, dtype=np.float32))
    t = {
        "input_ids": ids,
        "attention_mask": mask,
        "markers": markers,
        "cand_mask": cand,
        "features": feats,
    }
    y = torch.tensor(labels, dtype=torch.long) if labels is not None else None
    return Batch(t, y)


# -- checkpoints ---------------------------------------------------------------------------


def save_reranker(model, folder: str | Path, meta: dict[str, Any]) -> None:
    """Only what training changed: the LoRA adapter, the heads, and the metadata."""
    torch = _torch()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    inner = getattr(model, "module", model)  # unwrap DDP
    if inner.lm is not None:
        inner.lm.save_pretrained(folder / "adapter")
    # On the CPU: a re-ranker trained on a GPU is served from CPU-only replicas.
    heads = {k: v.detach().cpu() for k, v in inner.state_dict().items() if not k.startswith("lm.")}
    torch.save(heads, folder / "heads.pt")
    (folder / "reranker.json").write_text(json.dumps({"format": FORMAT, **meta}, indent=2))


def read_meta(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "reranker.json"
    if not path.exists():
        raise ArtifactError(f"no re-ranker at '{folder}' (reranker.json missing)")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ArtifactError(f"re-ranker at '{folder}' has format {meta.get('format')}; retrain")
    return meta


def load_reranker(
    folder: str | Path,
    base_model: str | None = None,
    expected_template: PromptTemplate | None = None,
):
    """(model, meta, info). Refuses a base model or template other than the trained ones."""
    meta = read_meta(folder)
    cfg = RerankerConfig.model_validate(meta["config"])
    if expected_template is not None and expected_template != cfg.template:
        raise RerankerError(
            f"the adapter in '{folder}' was trained with template {cfg.template.fingerprint()} "
            f"({cfg.template.name}), not {expected_template.fingerprint()}: retrain or use its "
            "template"
        )
    info = None
    if cfg.mode != "features":
        if base_model:
            cfg = cfg.model_copy(update={"base_model": base_model})
        info = inspect_base(cfg.base_path())
        if info.fingerprint != meta["base_fingerprint"]:
            raise RerankerError(
                f"the adapter in '{folder}' was trained on base model {meta['base_model']} "
                f"(fingerprint {meta['base_fingerprint']}), not '{info.path}' "
                f"({info.fingerprint})"
            )
    model = build_model(cfg, info, len(meta["features"]), meta.get("index_ids"))
    load_weights(model, folder)
    model.eval()
    return model, meta, info


def load_weights(model, folder: str | Path) -> None:
    """Put a checkpoint's adapter and heads (what `save_reranker` wrote) into `model`."""
    torch = _torch()
    folder = Path(folder)
    if model.lm is not None:
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        set_peft_model_state_dict(model.lm, load_peft_weights(str(folder / "adapter")))
    heads = torch.load(folder / "heads.pt", map_location="cpu", weights_only=True)
    missing = model.load_state_dict(heads, strict=False)
    bad = [k for k in missing.missing_keys if not k.startswith("lm.")]
    if bad or missing.unexpected_keys:
        raise ArtifactError(f"re-ranker heads in '{folder}' do not match: {bad or missing}")
