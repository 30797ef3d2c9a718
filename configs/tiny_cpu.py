"""The embedded default: built-in databases, a tiny Qwen3-style model trained from scratch, 2-core CPU.

Run: agro-sql run --config configs/tiny_cpu.py
"""

from ml_collections import ConfigDict

from configs.common import factory_model_keys, lora_config, mesh_config, optim_config


def get_config(arg=None):
    c = ConfigDict()
    c.seed = 0
    c.workdir = "runs/tiny_cpu"
    c.mesh = mesh_config((-1, 1, 1))

    # Policy. hf_path, when set, loads a local Hugging Face checkpoint and ignores the architecture fields.
    c.model = ConfigDict(
        {
            "hf_path": "",
            "family": "qwen3",  # qwen2 | qwen3
            "vocab_size": 0,  # 0: take it from the tokenizer
            "hidden_size": 64,
            "intermediate_size": 192,
            "num_layers": 2,
            "num_heads": 4,
            "num_kv_heads": 2,
            "head_dim": 16,
            "rope_theta": 10000.0,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True,
            "max_position_embeddings": 2048,
            "scan_layers": False,  # one lax.scan over the blocks: faster, leaner compiles for deep models
            "dtype": "float32",  # compute; "auto": bfloat16 on accelerators, float32 on CPU
            "param_dtype": "float32",  # master weights
            "remat": "none",  # none | full (recompute each block in backward) | save_dots (keep matmul outputs)
            "logits_chunk": 0,  # >0: log-probs/entropy from the lm_head in chunks of this many positions
            "lora": lora_config(0),  # rank > 0: train LoRA adapters only (base frozen; reference = adapters off)
        }
    )
    c.tokenizer = ConfigDict({"path": "", "vocab_size": 1024})  # path "": train the embedded byte-level BPE

    c.executor = ConfigDict(
        {
            "num_workers": 2,
            "timeout_s": 5.0,
            "max_rows": 10000,
            "max_cell_bytes": 65536,
            "heap_limit_bytes": 256 * 1024 * 1024,
        }
    )
    c.reward = ConfigDict({"correct": 1.0, "wrong": 0.0, "bad_format": -1.0, "compare_mode": "bird"})

    c.factory = ConfigDict(
        {
            "databases": ("university", "retail", "flights", "hospital", "library", "sports"),
            "rounds": 2,
            "candidates_per_round": 600,
            "max_check_cycles": 3,  # K: generation-as-check regeneration cycles
            "target_mix": ConfigDict({"simple": 0.3, "moderate": 0.35, "complex": 0.25, "highly_complex": 0.1}),
            "num_examples": 400,
            "heldout_fraction": 0.15,
            "heldout_by": "skeleton",  # skeleton | db | query: whole groups go to test (no leaked structures)
            "question_generator": "rules",  # rules | model (the policy at factory.model_path writes questions)
            **factory_model_keys(),
            "max_result_rows": 200,  # gold results with more rows are rejected (too_many_rows)
            "max_per_query": 1,  # examples kept per literal-masked query (same DB/tables/columns/structure)
            "oversample": 1.3,  # rounds stop once every difficulty bucket holds target * oversample
            "schema_compact": True,  # one line per table in schema_text (fits ~512-token prompts)
            "schema_sample_values": 2,  # 2 keeps the tiny BPE's prompts near 512 tokens (system prompt ~300)
            "extra_databases": (),  # glob patterns of more SQLite DBs to synthesize on (e.g. BIRD train DBs)
        }
    )
    c.data = ConfigDict({"data_dir": "", "dataset": "agro_sql", "train_split": "train", "eval_split": "test"})

    c.rollout = ConfigDict(
        {
            "max_turns": 3,
            "max_prompt_len": 512,
            "max_new_tokens_per_turn": 96,
            "max_total_len": 1024,
            "temperature": 0.7,  # the paper's; at 1.0 the small cold-start policy samples mostly malformed turns
            "top_p": 1.0,
            "top_k": 0,
            "observation_max_rows": 5,
            "observation_max_chars": 300,
            "min_prompt_bucket": 64,  # sampler pads prompts to powers of two >= this (one compile per bucket)
            # tags: strict <answer> (the training reward's) | tags_or_fence: a turn without agent tags answers with
            # its last ```sql block (evaluating off-the-shelf models)
            "answer_format": "tags",
            # KV-cache slots (rows x slots, slots = max_total_len bucketed) one device holds per rollout chunk:
            # prompts_per_step x group_size rows run in chunks of whole groups that fit (0: one chunk). Bytes per slot
            # = 2 x layers x kv_heads x head_dim x dtype bytes: 512 B for this model, 24 KB for Qwen2.5-0.5B float32,
            # 144 KB for Qwen3-8B bf16.
            "max_cache_tokens": 262144,
            "max_prefill_tokens": 8192,  # prompt rows x padded length per prefill call (its attention scores' size)
        }
    )
    # 256 trajectories / 8 per step x 8 epochs = 256 steps (~4 min on 2 cores); a from-scratch 64-wide model needs the
    # high lr (1e-3 for 48 steps left the loss at 5.0 and every GRPO sample badly formatted; this reaches ~0.8).
    c.sft = ConfigDict({"num_selected": 256, "batch_size": 8, "epochs": 8, "optim": optim_config(3e-3, 256, 10)})
    c.grpo = ConfigDict(
        {
            "steps": 30,
            "prompts_per_step": 8,
            "group_size": 4,
            "beta": 0.0,
            "clip_low": 0.2,
            "clip_high": 0.28,
            "advantage": "grpo",  # grpo | drgrpo
            # seq_mean_token_mean: long malformed (truncated) samples do not outweigh short well-formed ones
            "aggregation": "seq_mean_token_mean",  # token_mean | seq_mean_token_mean | drgrpo_constant
            "updates_per_batch": 1,  # mu
            "filter_zero_variance": True,
            "max_resample_rounds": 0,  # resampling doubles the rollout time; the 15-minute budget keeps it off
            "recompute_old_logp": False,  # True: old logprobs from a training-side forward, not the sampler
            "env": "sql",  # sql (agent + executor rollouts) | toy (learnable smoke task, no data needed)
            # Measured on the embedded default (30 steps after the cold start): lr 3e-4 took greedy held-out answers
            # from 33/69 missing + 22 syntax errors to 6 missing + 0 syntax errors; 1e-4 changed nothing, 5e-4 at
            # temperature 1.0 collapsed the policy.
            "optim": optim_config(3e-4, 30, 0),
        }
    )
    c.checkpoint = ConfigDict({"every_steps": 10, "keep": 2, "async_save": True, "export_hf": True})
    c.eval = ConfigDict(
        {
            "split": "test",
            "mode": "bird",
            "max_examples": 0,
            "batch_size": 16,
            "base": False,  # eval_base stage: the pretrained policy (model.hf_path) before training
            # + a Spider subset in every eval stage: every k-th executable example of spider_split, schema text as the
            # factory's (agro_jax/eval/agent_eval.py spider_subset); "" = the held-out split only
            "spider_dir": "",
            "spider_split": "dev",
            "spider_every": 20,
            "spider_max_examples": 0,
        }
    )
    return c
