"""Shared by rollout_bench.py (real-model case) and real_model_bench.py: the same multi-turn agent conversations
driven by other engines than the project's KV rollout engine (rollout/loop.py run_rollouts), with the same rules.

- `host_loop(generate, ...)`: run_rollouts' turn logic (live rows, per-row room in max_total_len, truncation when a
  turn ends without a stop, the protocol's parse and observation, the executor) around any per-turn
  `generate(convs, max_new) -> [(tokens, logps, stopped)]` that sees whole conversations: the previous engine
  (Sampler.generate of the engine before issue 12: re-prefills every conversation every turn) or transformers.
- `hf_generate(model, tok)`: transformers `generate`, greedy, left-padded batch, ending each row on EOS/pad or on the
  token after which its decoded text first contains a stop string (the project's rule).
- `ChatProtocol`: a multi-turn chat for off-the-shelf instruct models (benchmark only): the SQL of each turn (agent
  tags, else the last ```sql block) is executed and its result comes back as a user message, for max_turns - 1
  turns; the last turn's SQL is the answer.
"""

from __future__ import annotations

import resource
import time

from agro_jax.rollout import agent


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KB on Linux


def rss_gb() -> float:
    """This process's resident set now (GB)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1e6


def reset_peak_rss() -> None:
    """Restart the peak-RSS count (VmHWM, ru_maxrss) from the current RSS (Linux clear_refs 5), so a peak measured
    after it is the engine's, not the weight loader's transient."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class ChatProtocol:
    def __init__(self, max_turns: int, obs_rows: int = 5, obs_chars: int = 300):
        self.max_turns, self.obs_rows, self.obs_chars = max_turns, obs_rows, obs_chars

    def parse(self, text: str, turn: int) -> agent.Action:
        act = agent.parse_action(text, "tags_or_fence")
        if act.sql is None:
            return act
        return agent.Action("sql" if turn < self.max_turns - 1 else "answer", act.sql)

    def observation(self, result) -> tuple[str, str]:
        body = agent.format_observation(result, self.obs_rows, self.obs_chars)
        msg = f"That query returned:\n{body}\nCheck it against the question; then give the final SQL in a ```sql block."
        return body, f"\n<|im_start|>user\n{msg}<|im_end|>\n<|im_start|>assistant\n"


def host_loop(generate, tok, examples, executor, cfg, group_size: int, protocol) -> dict:
    """-> {tokens: per row conversation ids, gen_mask, final_sqls, reasons, turn_texts, generated, generate_s}."""
    from agro_jax.sql.executor import Query

    max_turns, max_total, max_new = int(cfg.max_turns), int(cfg.max_total_len), int(cfg.max_new_tokens_per_turn)
    prompts = [agent.prompt_ids(tok, e["schema_text"], e["question"], e.get("evidence", "")) for e in examples]
    n = len(examples) * group_size
    convs = [list(prompts[i // group_size]) for i in range(n)]
    mask = [[0] * len(c) for c in convs]
    final, reasons, texts = [None] * n, ["max_turns"] * n, [[] for _ in range(n)]
    active = [i for i in range(n) if len(prompts[i // group_size]) <= int(cfg.max_prompt_len)]
    for i in set(range(n)) - set(active):
        reasons[i] = "prompt_too_long"
    gen_s = 0.0
    for turn in range(max_turns):
        live = [i for i in active if len(convs[i]) < max_total]
        for i in set(active) - set(live):
            reasons[i] = "truncated"
        if not live:
            break
        t0 = time.perf_counter()
        outs = generate([convs[i] for i in live], max_new)
        gen_s += time.perf_counter() - t0
        queries, asked, active = [], [], []
        for i, (gen_all, _, stopped) in zip(live, outs):
            gen = gen_all[: max_total - len(convs[i])]
            convs[i] += gen
            mask[i] += [1] * len(gen)
            texts[i].append(tok.decode(gen, skip_special_tokens=False))
            if len(gen) < len(gen_all) or not stopped:
                reasons[i] = "truncated"
                continue
            action = protocol.parse(texts[i][-1], turn)
            end = agent.turn_end(action, turn, max_turns)
            if end is None:
                queries.append(Query(examples[i // group_size]["db_path"], action.sql))
                asked.append(i)
            else:
                reasons[i], final[i] = end, action.sql if end == "answer" else None
        if not queries:
            break
        for i, res in zip(asked, executor.run_many(queries)):
            ids = tok.encode(protocol.observation(res)[1], add_special_tokens=False)[: max_total - len(convs[i])]
            convs[i] += ids
            mask[i] += [0] * len(ids)
            active.append(i)
    return dict(tokens=convs, gen_mask=mask, final_sqls=final, reasons=reasons, turn_texts=texts,
                generated=sum(sum(m) for m in mask), generate_s=gen_s)  # fmt: skip


def stop_end(tok, row, end_ids, stop_strings) -> int | None:
    """Length of the shortest prefix of `row` ending on an end id or whose text contains a stop string (rows that
    transformers' StoppingCriteria ended continue with pad, itself an end id: the stop string must win)."""
    first_end = next((k for k, t in enumerate(row, 1) if t in end_ids), None)
    row = row[:first_end] if first_end else row
    if not any(s in tok.decode(row, skip_special_tokens=False) for s in stop_strings):
        return first_end
    lo, hi = 1, len(row)  # the stop's presence is monotone in the prefix length: bisect
    while lo < hi:
        mid = (lo + hi) // 2
        if any(s in tok.decode(row[:mid], skip_special_tokens=False) for s in stop_strings):
            hi = mid
        else:
            lo = mid + 1
    return lo


def hf_generate(model, tok, stop_strings=agent.STOP_STRINGS):
    """Per-turn `generate(convs, max_new)` through transformers (greedy; logps not computed: None)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    end_ids = {int(t) for t in (tok.eos_token_id, tok.pad_token_id) if t is not None}
    pad = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)

    class StopOnText(StoppingCriteria):
        def __init__(self, start):
            self.start = start

        def __call__(self, input_ids, scores, **kw):
            new = input_ids[:, self.start :]
            texts = tok.batch_decode(new[:, -8:], skip_special_tokens=False)  # a stop ends within the last tokens
            done = [any(s in t for s in stop_strings) for t in texts]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def generate(convs, max_new):
        p = max(map(len, convs))
        ids = torch.full((len(convs), p), pad, dtype=torch.long)
        att = torch.zeros((len(convs), p), dtype=torch.long)
        for b, c in enumerate(convs):
            ids[b, p - len(c) :], att[b, p - len(c) :] = torch.tensor(c), 1
        with torch.no_grad():
            stop = StoppingCriteriaList([StopOnText(p)])
            out = model.generate(ids, attention_mask=att, max_new_tokens=max_new, do_sample=False, pad_token_id=pad,
                                 eos_token_id=sorted(end_ids), stopping_criteria=stop)  # fmt: skip
        res = []
        for b in range(len(convs)):
            row = out[b, p:].tolist()
            end = stop_end(tok, row, end_ids, stop_strings)
            res.append((row[: end or max_new], None, end is not None))
        return res

    return generate


def sampler_generate(sampler, params):
    """Per-turn `generate(convs, max_new)` through a Sampler's single-turn generate (greedy)."""
    import jax

    def generate(convs, max_new):
        out = sampler.generate(params, convs, jax.random.key(0), temperature=0.0, max_new_tokens=max_new)
        return list(zip(out.tokens, out.logps, out.stopped))

    return generate
