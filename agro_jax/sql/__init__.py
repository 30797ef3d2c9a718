"""SQLite underneath everything: the sandboxed multiprocessing executor pool (executor.py `Executor.run_many`, its
workers in worker.py), execution-match comparison (compare.py `compare`), schema introspection and prompt text
(schema.py), and Spider/BIRD benchmark loading (benchmark_data.py).
"""
