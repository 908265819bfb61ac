"""The pipeline stages: plain async functions over plain data, one module each.

``download`` → ``chunk`` → ``extract`` → ``reduce`` → ``memory`` →
``regenerate`` → ``finalize``. The queue wiring lives in ``worker.tasks``.
"""
