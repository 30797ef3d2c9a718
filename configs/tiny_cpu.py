"""The embedded default: built-in databases, a tiny Qwen3-style model trained from scratch, 2-core CPU.

Run: agro-sql run --config configs/tiny_cpu.py

A learnable miniature of the paper's experiment (benchmarks/RESULTS.md "learning demo"): one- and two-table queries
over the six embedded databases, held out two ways: "test" = new questions and literal values over query structures
seen in training (the main line), "test_skeleton" = whole unseen structures (harder). A 128-wide, 2-layer model
learns these structures in a 6-9-minute cold start (by machine); GRPO then runs 20 steps with a greedy probe of the
held-out split every 5 steps, so its curve shows what RL changes.
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
            "hidden_size": 128,
            "intermediate_size": 384,
            "num_layers": 2,
            "num_heads": 4,
            "num_kv_heads": 2,
            "head_dim": 32,
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
    c.tokenizer = ConfigDict({"path": "", "vocab_size": 2048})  # path "": train the embedded byte-level BPE

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
            "rounds": 3,
            "candidates_per_round": 2880,
            "max_check_cycles": 3,  # K: generation-as-check regeneration cycles
            # The learnable miniature (issue: the main job shows learning): one- and two-table queries only; a 128-wide
            # model trained for minutes learns their structure, not the 3+-table ones (configs.common.paper_factory
            # restores the paper's full mix and skeleton split for real models).
            "target_mix": ConfigDict({"simple": 0.5, "moderate": 0.5, "complex": 0.0, "highly_complex": 0.0}),
            "num_examples": 2000,  # ~1450 train after both held-out splits (the pool holds ~1850 at 3 per query)
            "heldout_fraction": 0.1,
            # skeleton | db | query: whole groups go to test (no leaked structures) | literal: one example of a query
            # that has several goes to test (new question and literal values over a structure seen in training)
            "heldout_by": "literal",
            "skeleton_heldout_fraction": 0.1,  # > 0: also a "test_skeleton" split of whole unseen skeletons (harder)
            "question_generator": "rules",  # rules | model (the policy at factory.model_path writes questions)
            **factory_model_keys(),
            "max_result_rows": 200,  # gold results with more rows are rejected (too_many_rows)
            "max_per_query": 3,  # examples kept per literal-masked query (same DB/tables/columns/structure)
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
            # the paper's; at 1.0 the small cold-start policy samples mostly malformed turns. GRPO trains this tempered
            # policy: its log-probs (sampler and update) are of logits / temperature
            "temperature": 0.7,
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
    # Every train trajectory (~1450) / 8 per step x 6 epochs = ~1080 steps (~6 min on 2 quiet cores). Measured on this
    # data (128-wide): 2 epochs gave held-out EX 3.1%, 4 epochs 8.6%; the loss still falls at 4. What a short cold
    # start misses is copying literal values from the question (teacher-forced token accuracy ~60% on literals vs
    # ~95% on identifiers after 4 epochs). The from-scratch model needs the high lr.
    c.sft = ConfigDict({"num_selected": 2000, "batch_size": 8, "epochs": 6, "optim": optim_config(3e-3, 1080, 10)})
    c.sft.recovery_fraction = 0.0  # share of the selected trajectories given a failing first query (sft_recovery)
    c.grpo = ConfigDict(
        {
            # 20: what fits the 15 minutes on a slower 2-core machine (the whole job took 945 s with 30 steps, 533 s of
            # it the cold start; benchmarks/RESULTS.md "learning demo" has 20 and 30 steps side by side)
            "steps": 20,
            # 16 x 8: after a 2-epoch cold start (~3% EX) 8 x 4 sampled almost no correct answer, only the format
            # reward varied, and the greedy probe fell 4/64 -> 0/64 over 30 steps; after the 6-epoch one ~15-30% of
            # the 16 x 8 samples are right, so most groups carry a correctness signal
            "prompts_per_step": 16,
            "group_size": 8,
            "beta": 0.0,
            "clip_low": 0.2,
            "clip_high": 0.28,
            "advantage": "grpo",  # grpo | drgrpo
            # seq_mean_token_mean: long malformed (truncated) samples do not outweigh short well-formed ones
            "aggregation": "seq_mean_token_mean",  # token_mean | seq_mean_token_mean | drgrpo_constant
            "updates_per_batch": 1,  # mu
            # train: every train example | not_in_sft: those the cold start did not select (sft.num_selected < train;
            # measured once, 30 steps from one cold start: held-out EX 12.2% -> 10.3% vs 12.7% with "train")
            "prompts": "train",
            "filter_zero_variance": True,
            # which groups teach (rollout/batch.py informative_rows): reward (their rewards differ) | accuracy (right
            # and wrong answers alike, DAPO's rule; a group of wrong answers with a malformed one then does not push
            # the well-formed wrong SQL up)
            "filter_by": "reward",
            "max_resample_rounds": 0,  # resampling doubles the rollout time; the 15-minute budget keeps it off
            "recompute_old_logp": False,  # True: old logprobs from a training-side forward, not the sampler
            # every probe_every steps: EX / reward / format rate on the first probe_examples held-out examples
            "probe_every": 5,
            "probe_examples": 64,
            "probe_samples": 0,  # 0: greedy (what eval scores) | k: expected reward of k samples per question
            "env": "sql",  # sql (agent + executor rollouts) | toy (learnable smoke task, no data needed)
            # Measured from one 6-epoch cold start (30 steps, 16 x 8): lr 3e-4 held-out EX 15/128 -> 15/128, unseen
            # skeletons 17/128 -> 25/128; 1e-4: 15 -> 15 and 17 -> 18. (On the earlier 64-wide default, which never
            # answered right, 5e-4 at temperature 1.0 collapsed the policy.)
            "optim": optim_config(3e-4, 20, 0),
        }
    )
    # every 50: the cold start's 1080 steps saved every 10 cost ~11 s (0.1 s per save); a killed run loses <= 50 steps
    c.checkpoint = ConfigDict({"every_steps": 50, "keep": 2, "async_save": True, "export_hf": True})
    c.eval = ConfigDict(
        {
            "split": "test",
            "mode": "bird",
            "max_examples": 0,
            "extra_splits": ("test_skeleton",),  # more held-out splits to evaluate (eval/<split>/); absent: skipped
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
