"""Parallelism primitives: the (data, fsdp, tensor) mesh and the logical-axis rules that map params and batches onto
it (sharding.py `make_mesh`, `state_shardings`, `shard_batch`), and multi-host start-up and batch placement
(multihost.py `maybe_initialize_distributed`, `place_batch`).
"""
