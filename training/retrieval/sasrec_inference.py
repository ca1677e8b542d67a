"""SASRec's network in inference, in numpy: what a request runs (`SelfAttentive.score`,
`SelfAttentive.search`), apart from the torch code that trains it."""

from __future__ import annotations

import numpy as np


class NumpyInference:
    """`_Network` in inference, in numpy, for one short sequence per call.

    Serving calls it once per request, where torch's per-operator dispatch costs more than
    the arithmetic. Weights are laid out once (transposed, contiguous); the last block
    computes the last position only, the one whose output is read.
    """

    def __init__(self, w: dict[str, np.ndarray], heads: int):
        self.heads = heads
        self.items = w["items.weight"]
        self.outputs = np.ascontiguousarray(self.items[1:])
        self.positions = w["positions.weight"]
        self.norm = (w["norm.weight"], w["norm.bias"])
        n_layers = len({k.split(".")[2] for k in w if k.startswith("blocks.layers.")})
        self.layers = []
        for i in range(n_layers):
            p = f"blocks.layers.{i}."
            t = {k[len(p) :]: v for k, v in w.items() if k.startswith(p)}
            self.layers.append(
                (
                    (t["norm1.weight"], t["norm1.bias"]),
                    np.ascontiguousarray(t["self_attn.in_proj_weight"].T),
                    t["self_attn.in_proj_bias"],
                    np.ascontiguousarray(t["self_attn.out_proj.weight"].T),
                    t["self_attn.out_proj.bias"],
                    (t["norm2.weight"], t["norm2.bias"]),
                    np.ascontiguousarray(t["linear1.weight"].T),
                    t["linear1.bias"],
                    np.ascontiguousarray(t["linear2.weight"].T),
                    t["linear2.bias"],
                )
            )
        d = self.items.shape[1]
        self.mean_vector = np.full(d, 1.0 / d, dtype=np.float32)
        length = self.positions.shape[0]
        self.causal = np.triu(np.full((length, length), -np.inf, dtype=np.float32), k=1)

    def _layer_norm(self, x: np.ndarray, weight_bias: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        # Row means as matrix-vector products: fewer, cheaper calls than mean(keepdims).
        c = x - (x @ self.mean_vector)[..., None]
        scale = 1.0 / np.sqrt((c * c) @ self.mean_vector + 1e-5)
        return c * scale[..., None] * weight_bias[0] + weight_bias[1]

    def next_item_logits(self, seq: np.ndarray) -> np.ndarray:
        """Logits of every item (catalogue order) after `seq` (shifted ids, 1-based)."""
        return (self.outputs @ self.hidden(seq)).astype(np.float32)

    def hidden(self, seq: np.ndarray) -> np.ndarray:
        """The output vector after `seq`: an item's logit is its product with it."""
        length = len(seq)
        x = self.items[seq] + self.positions[:length]
        d = x.shape[1]
        dh = d // self.heads
        scale = np.float32(1.0 / np.sqrt(dh))
        mask = self.causal[:length, :length]
        last_layer = len(self.layers) - 1
        for i, (n1, w_in, b_in, w_out, b_out, n2, w1, b1, w2, b2) in enumerate(self.layers):
            qkv = self._layer_norm(x, n1) @ w_in + b_in
            q, k, v = qkv[:, :d], qkv[:, d : 2 * d], qkv[:, 2 * d :]
            m = mask
            if i == last_layer:
                q, x, m = q[-1:], x[-1:], mask[-1:]
            heads = []
            for j in range(self.heads):
                cols = slice(j * dh, (j + 1) * dh)
                att = (q[:, cols] @ k[:, cols].T) * scale + m
                att = np.exp(att - att.max(-1, keepdims=True))
                att /= att.sum(-1, keepdims=True)
                heads.append(att @ v[:, cols])
            x = x + np.concatenate(heads, axis=1) @ w_out + b_out
            x = x + np.maximum(self._layer_norm(x, n2) @ w1 + b1, 0.0) @ w2 + b2
        return self._layer_norm(x[-1], self.norm).astype(np.float32)
