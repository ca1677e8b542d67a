"""Batch data pipelines: raw interaction logs in, a versioned dataset artifact out.

Import direction is pipelines <- training <- serving: everything downstream reads the
contracts defined here (`pipelines.schema`, `pipelines.artifact`) and nothing here imports Ray
at module level; `pipelines.prepare_ray` is the thin Ray Data shell.
"""

__version__ = "0.1.0"
