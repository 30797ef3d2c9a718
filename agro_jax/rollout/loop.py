"""Multi-turn agent rollouts: G samples per prompt, every turn batched across the live sequences of a chunk, executor
calls of a turn submitted together, observations appended as context (masked out of the loss) -> a Rollout batch.

The rows are processed in chunks of whole groups sized by rollout.max_cache_tokens (the KV-cache slots one device
may hold: rows x slots / batch shards; 0 = one chunk). Each chunk is a KVSession (rollout/session.py): each distinct
prompt is prefilled once and its cache copied to its G rows, the cache lives across turns (an observation costs an
extend-prefill of its own tokens), finished rows are compacted away. Every row samples with its own key, so the
chunking, the compaction and the batch a row lands in never change its tokens.

A sequence ends when it answers, writes an invalid turn, explores on its last allowed turn, or runs out of
max_total_len (truncation): the last three leave final_sql None, which compute_rewards scores as bad format.
A prompt longer than max_prompt_len is never cut: its G rows are skipped (no generation, finish reason
"prompt_too_long", final_sql None: bad format for the reward, no answer for eval) and counted.

Multi-process: each host rolls out its own examples with its own executor; chunks and turns stay in lock-step across
hosts (the session's programs are collective), so a loop ends only when no host has a live sequence.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import numpy as np

from agro_jax.rollout import agent
from agro_jax.rollout.sampler import next_pow2, params_mesh
from agro_jax.rollout.session import KVSession
from agro_jax.scale.multihost import any_host, process_max

STOP_KINDS = ("budget", "stop_id", "stop_string")


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
    finish_reasons: list  # answer | invalid | max_turns | truncated | prompt_too_long
    reward_infos: list
    timings: dict  # generate / execute / reward seconds
    transcripts: list = dataclasses.field(default_factory=list)  # per row: [{text, tokens, stop, observation, ...}]
    prompt_lens: list = dataclasses.field(default_factory=list)  # per row: prompt tokens
    stats: dict = dataclasses.field(default_factory=dict)  # engine counters (KVSession.stats summed over chunks)


class AgentProtocol:
    """How turns are read and observations written: agent.parse_action under rollout.answer_format and
    agent.observation_text. Benchmarks may pass another protocol (same two methods)."""

    def __init__(self, answer_format: str = "tags", obs_rows: int = 5, obs_chars: int = 300):
        self.answer_format = agent.check_answer_format(answer_format)
        self.obs_rows, self.obs_chars = obs_rows, obs_chars

    def parse(self, text: str, turn: int) -> agent.Action:
        return agent.parse_action(text, self.answer_format)

    def observation(self, result) -> tuple[str, str]:
        """-> (observation body for the transcript, the piece appended to the conversation)."""
        body = agent.format_observation(result, self.obs_rows, self.obs_chars)
        return body, agent.observation_text(body)


def slot_cap(sampler, rollout_cfg) -> int:
    """Cache slots a row may use: max_total_len rounded up to the sampler's length buckets."""
    return next_pow2(int(rollout_cfg.max_total_len), sampler.min_prompt_bucket)


def plan_chunks(num_groups: int, group_size: int, sampler, params, rollout_cfg, lengths=None) -> list[list[int]]:
    """Groups per chunk so that a chunk's cache (rows bucketed to a power of two, each row slot_cap slots) fits
    rollout.max_cache_tokens per device, the rows split over the batch shards of the params' mesh. With `lengths`
    (prompt tokens per group) chunks take groups in order of length, so a chunk pads its prompts little."""
    budget = int(rollout_cfg.get("max_cache_tokens", 0))
    groups = list(range(num_groups))
    if lengths is not None:
        groups.sort(key=lambda i: lengths[i])
    if budget <= 0 or not groups:
        return [groups]
    try:
        mesh = params_mesh(params)
        shards = math.prod(mesh.shape[a] for a in ("data", "fsdp") if a in mesh.shape) // jax.process_count()
    except ValueError:
        shards = 1
    cap = slot_cap(sampler, rollout_cfg)
    rows = budget * max(1, shards) // cap
    rows = 1 << (rows.bit_length() - 1) if rows else 0  # rows are bucketed to powers of two
    per = rows // group_size
    if per < 1:
        raise ValueError(
            f"rollout.max_cache_tokens={budget} holds {rows} rows of {cap} slots per device x {shards} shards, less "
            f"than one group of {group_size}: raise it (or lower max_total_len / group_size)"
        )
    return [groups[i : i + per] for i in range(0, num_groups, per)]


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
    protocol=None,
) -> Rollout:
    """examples: factory records (schema_text, question, evidence, db_path[, sql]). Rewards are computed (via
    agro_jax.rl.rewards.compute_rewards against ex['sql']) only when reward_cfg is given."""
    from agro_jax.sql.executor import Query

    tok, g = sampler.tokenizer, int(group_size)
    max_turns, max_total = int(rollout_cfg.max_turns), int(rollout_cfg.max_total_len)
    max_prompt, max_new = int(rollout_cfg.max_prompt_len), sampler.max_new_tokens
    protocol = protocol or AgentProtocol(
        rollout_cfg.get("answer_format", "tags"),
        int(rollout_cfg.observation_max_rows),
        int(rollout_cfg.observation_max_chars),
    )
    timings = {"generate": 0.0, "execute": 0.0, "reward": 0.0}
    for i, ex in enumerate(examples):
        for key in ("schema_text", "question", "db_path"):
            if key not in ex:
                raise ValueError(f"run_rollouts: example {i} has no field {key!r}")

    prompts = [agent.prompt_ids(tok, ex["schema_text"], ex["question"], ex.get("evidence", "")) for ex in examples]
    n = len(examples) * g
    groups = [i // g for i in range(n)]
    convs = [list(prompts[gi]) for gi in groups]
    masks = [[0.0] * len(c) for c in convs]
    logps = [[0.0] * len(c) for c in convs]
    texts, transcripts = [""] * n, [[] for _ in range(n)]
    final, reasons = [None] * n, ["max_turns"] * n
    turns = np.zeros(n, np.int32)
    fits = [gi for gi, p in enumerate(prompts) if len(p) <= max_prompt and len(p) < max_total]
    for i in range(n):
        if len(prompts[groups[i]]) > max_prompt:
            reasons[i] = "prompt_too_long"
        elif len(prompts[groups[i]]) >= max_total:  # no room to generate: never prefilled
            reasons[i] = "truncated"
    temp = 0.0 if greedy else None
    knobs = sampler.knobs(temperature=temp)
    lengths = [len(prompts[gi]) for gi in fits]
    chunks = plan_chunks(len(fits), g, sampler, params, rollout_cfg, lengths) if fits else []
    (n_chunks,) = process_max([len(chunks)])
    chunks += [[]] * (int(n_chunks) - len(chunks))  # a host with fewer chunks joins the collective calls empty
    host = jax.process_index() << 20
    too_long = sum(len(p) > max_prompt for p in prompts)
    stats = {"chunks": len(chunks), "prompts_too_long": too_long, "layouts": []}

    for chunk in chunks:
        gids = [fits[c] for c in chunk]
        rows = [gi * g + j for gi in gids for j in range(g)]
        t0 = time.perf_counter()
        sess = KVSession(sampler, params, [prompts[gi] for gi in gids], group_size=g,
                         row_ids=[host + r for r in rows], slot_cap=slot_cap(sampler, rollout_cfg),
                         prefill_tokens=int(rollout_cfg.get("max_prefill_tokens", 8192)))  # fmt: skip
        timings["generate"] += time.perf_counter() - t0
        active = list(range(len(rows)))  # session row indices
        for turn in range(max_turns):
            live = [k for k in active if len(convs[rows[k]]) < max_total]
            for k in set(active) - set(live):
                reasons[rows[k]] = "truncated"
            if not any_host(bool(live)):
                break
            t0 = time.perf_counter()
            budgets = {k: min(max_new, max_total - len(convs[rows[k]])) for k in live}
            out = sess.decode(budgets, jax.random.fold_in(rng, turn), knobs)
            timings["generate"] += time.perf_counter() - t0
            queries, asked, active = [], [], []
            for k in live:
                i = rows[k]
                gen, lp, kind = out[k]
                convs[i] += gen
                masks[i] += [1.0] * len(gen)
                logps[i] += lp
                text = tok.decode(gen, skip_special_tokens=False)
                sampler.check_turn(text, kind, f"row {i} turn {turn}")
                texts[i] += text
                turns[i] += 1
                transcripts[i].append({"text": text, "tokens": len(gen), "stop": STOP_KINDS[kind]})
                if kind == 0:  # ran out of tokens (turn budget or max_total_len) before a stop
                    reasons[i] = "truncated"
                    continue
                action = protocol.parse(text, turn)
                end = agent.turn_end(action, turn, max_turns)
                if end is None:
                    queries.append(Query(examples[groups[i]]["db_path"], action.sql))
                    asked.append(k)
                else:
                    reasons[i], final[i] = end, action.sql if end == "answer" else None
            if not any_host(bool(queries)):
                break
            t0 = time.perf_counter()
            results = executor.run_many(queries) if queries else []
            timings["execute"] += time.perf_counter() - t0
            for k, res in zip(asked, results):
                i = rows[k]
                body, piece = protocol.observation(res)
                ids = tok.encode(piece, add_special_tokens=False)[: max_total - len(convs[i])]
                convs[i] += ids
                masks[i] += [0.0] * len(ids)
                logps[i] += [0.0] * len(ids)
                texts[i] += piece
                transcripts[i][-1].update(observation=body, observation_tokens=len(ids))
                sess.append(k, ids)
                active.append(k)
        for key, v in sess.stats.items():
            stats[key] = stats.get(key, 0) + v if key != "layouts" else stats["layouts"] + v

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
        gold = [examples[gi]["sql"] for gi in groups]
        dbs = [examples[gi]["db_path"] for gi in groups]
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
        transcripts=transcripts,
        prompt_lens=[len(prompts[gi]) for gi in groups],
        stats=stats,
    )


def greedy_generate_fn(sampler, params, executor, rollout_cfg, seed: int = 0, protocol=None):
    """`generate_fn(examples) -> list[record]` for evaluate.evaluate_policy: one greedy rollout each; a record is
    {final_sql, finish_reason, num_turns, prompt_tokens, generated_tokens, turns: [{text, tokens, stop,
    observation, observation_tokens}]}."""

    def generate_fn(examples):
        ro = run_rollouts(sampler, params, examples, executor, rollout_cfg, group_size=1, rng=jax.random.key(seed),
                          greedy=True, protocol=protocol)  # fmt: skip
        return [
            {"final_sql": ro.final_sqls[i], "finish_reason": ro.finish_reasons[i], "num_turns": int(ro.num_turns_B[i]),
             "prompt_tokens": ro.prompt_lens[i], "generated_tokens": int(ro.loss_mask_BxT[i].sum()),
             "turns": ro.transcripts[i]}
            for i in range(len(examples))
        ]  # fmt: skip

    return generate_fn
