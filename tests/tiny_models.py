"""Tiny, randomly initialised language models built in the test (nothing is downloaded)."""

from __future__ import annotations

import string
from pathlib import Path

import torch


def tiny_encoder(folder: Path) -> Path:
    """A 2-layer BERT with the offline MiniLM tokenizer (random weights)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from training.retrieval.embeddings import default_model_path

    tok = AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    model = BertModel(cfg)
    model.config.architectures = ["BertModel"]
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def word_tokenizer(words: list[str], letters: str = string.ascii_uppercase):
    """A word-level tokenizer over `words` plus single-letter index tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(specials + list(letters) + words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        bos_token="[BOS]",
        eos_token="[EOS]",
    )


def tiny_causal(folder: Path, texts: list[str], letters: str = string.ascii_uppercase) -> Path:
    """A 2-layer GPT-2 whose word-level tokenizer is built from `texts`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    words = sorted({w for t in [*texts, "history: candidates: best: ;"] for w in _words(t)})
    tok = word_tokenizer(words, letters)
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=512,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _words(text: str) -> list[str]:
    out, cur = [], ""
    for ch in text:
        if ch.isspace() or ch in string.punctuation:
            if cur:
                out.append(cur)
            cur = ""
            if ch in string.punctuation:
                out.append(ch)
        else:
            cur += ch
    return out + ([cur] if cur else [])
