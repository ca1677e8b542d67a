"""Entry points: the `llmrec` CLI, Ray job entrypoints, and cluster configuration."""
