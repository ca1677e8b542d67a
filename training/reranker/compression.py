"""How a trained re-ranker is compressed for CPU serving: the one definition, read by the
re-ranker's loader, the benchmarks and the Serve graph's `compression` live setting."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Compression(BaseModel):
    """CPU compression applied after loading (the LoRA adapter is merged first); also the
    `compression` live setting of the Serve graph.

    int8: dynamic int8 on the Linear layers except each block's feed-forward output, which
    int8 breaks on MiniLM (docs/RERANKER.md). layers: keep only the first N transformer
    blocks. item_tokens: a tighter token budget per item than the model was trained with.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    int8: bool = Field(False, description="dynamic int8 quantisation of the linear layers")
    layers: int | None = Field(None, ge=1, description="keep the first N blocks")
    item_tokens: int | None = Field(None, ge=2, description="tighter token budget per item")

    def label(self) -> str:
        parts = ["int8" if self.int8 else "fp32"]
        if self.layers:
            parts.append(f"{self.layers} layers")
        if self.item_tokens:
            parts.append(f"{self.item_tokens} tokens/item")
        return ", ".join(parts)
