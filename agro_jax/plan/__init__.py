"""AOT planning for TPU slices on any machine (libtpu compiles for abstract devices; nothing runs, no weights read).

Entry: `agro_jax.plan.main:plan_main`. Run: agro-sql plan --config configs/qwen3_8b_tpu.py --topology v5p-64
(needs libtpu: pip install 'agro-jax[tpu]'). topologies.py: slice names, chips' HBM and peak FLOP/s;
programs.py: the training programs and their measurement.
"""
