"""The `llmrec` commands, one module per group: data, models, serving, demo."""
