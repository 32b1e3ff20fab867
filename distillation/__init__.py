"""The training core: teacher → student distillation. Imports nothing of the web, the database
or Celery; it takes a plain `JobConfig` and a progress callback, so the worker, the CLI, tests and
benchmarks all drive the same code."""
