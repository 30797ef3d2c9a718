"""The RL algorithm: rewards from execution (rewards.py `compute_rewards`), group-relative advantages (advantages.py,
a registry), policy losses (losses.py, a registry), and the jitted micro-batched GRPO update (grpo.py
`make_update_step`).
"""
