"""Offline evaluation: the LlamaRec leave-one-out protocol, metrics and bootstrap tests."""
