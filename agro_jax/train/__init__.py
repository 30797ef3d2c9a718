"""Training: the one loop with checkpoints and metrics (loop.py `train_loop`) and its stages (stages.py `run_sft`,
`run_grpo`; `agro-sql sft|grpo --config configs/tiny_cpu.py`), cold-start SFT data and step (sft.py, with
diversity-aware selection in sft_select.py), orbax checkpoints + HF export (checkpoint.py), optax (optim.py) and
metrics logging (metrics.py).
"""
