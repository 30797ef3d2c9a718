"""Multi-turn agent rollouts: G samples per prompt, every turn batched across all live sequences, executor calls of a
turn submitted together, observations appended as context (masked out of the loss) -> a Rollout batch.

Each turn re-prefills the whole conversation (prompt + previous turns + observations) through the KV-cache Sampler;
finished sequences simply drop out of the next turn's batch. A sequence ends when it answers, writes an invalid turn,
explores on its last allowed turn, or runs out of max_total_len (truncation): the last three leave final_sql None,
which compute_rewards scores as bad format.

Multi-process: each host rolls out its own examples with its own executor; turns stay in lock-step across hosts
(the sampler call is collective), so the loop ends only when no host has a live sequence.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from agro_jax.rollout import agent
from agro_jax.scale.multihost import any_host


@dataclasses.dataclass
class Rollout:
    """Right-padded batch, row b = group_ids_B[b]'s prompt + that sample's trajectory. old_logp_BxT[:, t] is the
    sampler's logp of tokens_BxT[:, t] (0 where loss_mask is 0)."""

    tokens_BxT: np.ndarray  # int32
    valid_BxT: np.ndarray  # bool: real tokens (attention validity)
    loss_mask_BxT: np.ndarray  # float32: 1 exactly on agent-generated tokens
    old_logp_BxT: np.ndarray  # float32
    group_ids_B: np.ndarray  # int32: index of the prompt in `examples`
    rewards_B: np.ndarray  # float32 (zeros unless reward_cfg was given)
    num_turns_B: np.ndarray  # int32: generated turns (exploration turns + the answer turn)
    final_sqls: list  # str | None per row
    texts: list  # assistant text per row (turns + observations)
    finish_reasons: list  # answer | invalid | max_turns | truncated
    reward_infos: list
    timings: dict  # generate / execute / reward seconds


def run_rollouts(
    sampler,
    params,
    examples: list[dict],
    executor,
    rollout_cfg,
    *,
    group_size: int,
    rng,
    reward_cfg=None,
    greedy: bool = False,
) -> Rollout:
    """examples: factory records (schema_text, question, evidence, db_path[, sql]). Rewards are computed (via
    agro_jax.rl.rewards.compute_rewards against ex['sql']) only when reward_cfg is given."""
    from agro_jax.sql.executor import Query

    tok = sampler.tokenizer
    max_turns, max_total = int(rollout_cfg.max_turns), int(rollout_cfg.max_total_len)
    max_prompt = int(rollout_cfg.max_prompt_len)
    obs_rows, obs_chars = int(rollout_cfg.observation_max_rows), int(rollout_cfg.observation_max_chars)
    timings = {"generate": 0.0, "execute": 0.0, "reward": 0.0}
    for i, ex in enumerate(examples):
        for key in ("schema_text", "question", "db_path"):
            if key not in ex:
                raise ValueError(f"run_rollouts: example {i} has no field {key!r}")

    convs, masks, logps, texts, groups = [], [], [], [], []
    for gi, ex in enumerate(examples):
        ids = agent.prompt_ids(tok, ex["schema_text"], ex["question"], ex.get("evidence", ""))
        if len(ids) > max_prompt:  # keep the tail: the question and the assistant header matter most
            ids = ids[-max_prompt:]
        for _ in range(group_size):
            convs.append(list(ids))
            masks.append([0.0] * len(ids))
            logps.append([0.0] * len(ids))
            texts.append("")
            groups.append(gi)
    n = len(convs)
    final = [None] * n
    reasons = ["max_turns"] * n
    turns = np.zeros(n, np.int32)
    active = list(range(n))
    temp = 0.0 if greedy else None

    for turn in range(max_turns):
        live = [i for i in active if len(convs[i]) < max_total]
        for i in set(active) - set(live):
            reasons[i] = "truncated"
        if not any_host(bool(live)):
            break
        # Multi-process generate is collective: a host whose rows are all done still joins with a dummy prompt.
        prompts = [convs[i] for i in live] or [[int(sampler.pad_id)]]
        t0 = time.perf_counter()
        out = sampler.generate(params, prompts, jax.random.fold_in(rng, turn), temperature=temp)
        timings["generate"] += time.perf_counter() - t0
        queries, asked, active = [], [], []
        for j, i in enumerate(live):
            room = max_total - len(convs[i])
            gen, lp = out.tokens[j][:room], out.logps[j][:room]
            convs[i] += gen
            masks[i] += [1.0] * len(gen)
            logps[i] += lp
            text = tok.decode(gen, skip_special_tokens=False)
            texts[i] += text
            turns[i] += 1
            if len(gen) < len(out.tokens[j]) or not out.stopped[j]:
                reasons[i] = "truncated"
                continue
            action = agent.parse_action(text)
            if action.kind == "answer":
                final[i], reasons[i] = action.sql, "answer"
            elif action.kind == "invalid":
                reasons[i] = "invalid"
            elif turn == max_turns - 1:
                reasons[i] = "max_turns"
            else:
                queries.append(Query(examples[groups[i]]["db_path"], action.sql))
                asked.append(i)
        if not any_host(bool(queries)):
            break
        t0 = time.perf_counter()
        results = executor.run_many(queries) if queries else []
        timings["execute"] += time.perf_counter() - t0
        for i, res in zip(asked, results):
            piece = agent.observation_text(agent.format_observation(res, obs_rows, obs_chars))
            ids = tok.encode(piece, add_special_tokens=False)[: max_total - len(convs[i])]
            convs[i] += ids
            masks[i] += [0.0] * len(ids)
            logps[i] += [0.0] * len(ids)
            texts[i] += piece
            active.append(i)

    t = max(len(c) for c in convs)
    pad = int(sampler.pad_id)
    tokens = np.full((n, t), pad, np.int32)
    valid = np.zeros((n, t), bool)
    loss_mask = np.zeros((n, t), np.float32)
    old_logp = np.zeros((n, t), np.float32)
    for i in range(n):
        k = len(convs[i])
        tokens[i, :k], valid[i, :k], loss_mask[i, :k], old_logp[i, :k] = convs[i], True, masks[i], logps[i]
    rewards, infos = np.zeros(n, np.float32), [{} for _ in range(n)]
    if reward_cfg is not None:
        from agro_jax.rl.rewards import compute_rewards

        t0 = time.perf_counter()
        gold = [examples[g]["sql"] for g in groups]
        dbs = [examples[g]["db_path"] for g in groups]
        rewards, infos = compute_rewards(final, gold, dbs, executor, reward_cfg)
        timings["reward"] = time.perf_counter() - t0
    return Rollout(
        tokens_BxT=tokens,
        valid_BxT=valid,
        loss_mask_BxT=loss_mask,
        old_logp_BxT=old_logp,
        group_ids_B=np.asarray(groups, np.int32),
        rewards_B=np.asarray(rewards, np.float32),
        num_turns_B=turns,
        final_sqls=final,
        texts=texts,
        finish_reasons=reasons,
        reward_infos=list(infos),
        timings=timings,
    )


def greedy_generate_fn(sampler, params, executor, rollout_cfg, seed: int = 0):
    """`generate_fn(examples) -> list[final sql | None]` for evaluate.evaluate_policy: one greedy rollout each."""

    def generate_fn(examples):
        rng = jax.random.key(seed)
        return run_rollouts(
            sampler, params, examples, executor, rollout_cfg, group_size=1, rng=rng, greedy=True
        ).final_sqls

    return generate_fn
