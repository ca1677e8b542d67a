"""The one listwise prompt, shared by training, evaluation and serving.

A prompt holds the user's most recent history items, oldest first, and K candidates, each
introduced by its index token (A, B, C, ...):

    [bos/cls] history: t1 ; t2 ; ... candidates: A c1 B c2 ... best: [sep]

(the trailing special token only for encoders; a causal LM scores the token after "best:").

Item texts are tokenised once, cut to `item_tokens` each, and the prompt is assembled from
token ids, so its length is bounded whatever the history length and the index tokens are
exactly the ids the model scores (no re-tokenisation can merge them with a title).
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipelines.errors import LlmrecError

TEMPLATE_NAME = "listwise-v1"
ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits


class PromptError(LlmrecError):
    """A template that cannot be rendered with this tokenizer or model."""


class PromptTemplate(BaseModel):
    """Everything that decides the prompt's tokens; saved with every adapter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = TEMPLATE_NAME
    history_items: int = Field(10, ge=1, le=100, description="most recent history items shown")
    candidates: int = Field(20, ge=2, le=len(ALPHABET), description="K candidates per prompt")
    item_tokens: int = Field(12, ge=2, le=128, description="token budget per item text")
    history_label: str = "history:"
    candidates_label: str = "candidates:"
    answer_label: str = "best:"
    separator: str = ";"

    def fingerprint(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


@dataclass
class Rendered:
    input_ids: list[int]
    #: position of each candidate's index token
    markers: list[int]


class PromptRenderer:
    """Renders prompts for one tokenizer; item texts are tokenised once and cached."""

    def __init__(
        self, template: PromptTemplate, tokenizer: Any, item_texts: list[str], causal: bool
    ):
        self.template = template
        self.tokenizer = tokenizer
        self.index_ids = index_token_ids(tokenizer, template.candidates)
        probe = tokenizer("x", add_special_tokens=True)["input_ids"]
        bare = tokenizer("x", add_special_tokens=False)["input_ids"]
        # Whatever special tokens this tokenizer adds around a text (CLS/SEP, BOS, nothing).
        at = _find(probe, bare)
        # A causal LM scores the token after "best:", so nothing may follow it (no EOS).
        self.prefix = probe[:at]
        self.suffix = [] if causal else probe[at + len(bare) :]
        self.words = {
            key: tokenizer(getattr(template, key), add_special_tokens=False)["input_ids"]
            for key in ("history_label", "candidates_label", "answer_label", "separator")
        }
        self.item_ids: list[list[int]] = []
        self.add_items(item_texts)

    def add_items(self, texts: list[str]) -> None:
        """Tokenise new items' texts (appended in item-id order)."""
        if not texts:
            return
        enc = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        self.item_ids.extend(ids[: self.template.item_tokens] for ids in enc)

    @property
    def max_length(self) -> int:
        t = self.template
        w = self.words
        per_hist = t.item_tokens + len(w["separator"])
        per_cand = t.item_tokens + 1
        return (
            len(self.prefix)
            + len(self.suffix)
            + len(w["history_label"])
            + len(w["candidates_label"])
            + len(w["answer_label"])
            + t.history_items * per_hist
            + t.candidates * per_cand
        )

    def render(
        self, history: np.ndarray | list[int], candidates: np.ndarray | list[int]
    ) -> Rendered:
        t = self.template
        if len(candidates) > t.candidates:
            raise PromptError(
                f"{len(candidates)} candidates given, the template holds {t.candidates}"
            )
        w = self.words
        ids = list(self.prefix) + w["history_label"]
        recent = list(history)[-t.history_items :]
        for i, item in enumerate(recent):
            if i:
                ids += w["separator"]
            ids += self.item_ids[int(item)]
        ids += w["candidates_label"]
        markers = []
        for k, item in enumerate(candidates):
            markers.append(len(ids))
            ids.append(self.index_ids[k])
            ids += self.item_ids[int(item)]
        ids += w["answer_label"] + list(self.suffix)
        return Rendered(ids, markers)

    def text(self, history, candidates) -> str:
        """The prompt as text, for people reading logs and docs."""
        return self.tokenizer.decode(self.render(history, candidates).input_ids)


def index_token_ids(tokenizer: Any, k: int) -> list[int]:
    """One distinct single token per candidate index: ' A' or 'A', whichever the tokenizer
    keeps whole. Raises when the tokenizer cannot give `k` distinct ones."""
    if k > len(ALPHABET):
        raise PromptError(f"K={k} candidates exceeds the index alphabet ({len(ALPHABET)} labels)")
    ids: list[int] = []
    special = set(getattr(tokenizer, "all_special_ids", []) or [])  # [UNK] is no label
    for label in ALPHABET:
        for form in (" " + label, label):
            enc = tokenizer(form, add_special_tokens=False)["input_ids"]
            if len(enc) == 1 and enc[0] not in ids and enc[0] not in special:
                ids.append(enc[0])
                break
        if len(ids) == k:
            return ids
    raise PromptError(
        f"the tokenizer has only {len(ids)} distinct single-token index labels, K={k} needs "
        f"{k}: lower the number of candidates or use a tokenizer with room for them"
    )


def _find(seq: list[int], sub: list[int]) -> int:
    for i in range(len(seq) - len(sub) + 1):
        if seq[i : i + len(sub)] == sub:
            return i
    raise PromptError("cannot locate the text inside the tokenizer's special tokens")
