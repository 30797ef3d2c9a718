"""One GRPO rollout batch as the update needs it: dynamic sampling (zero-variance groups replaced from extra
rounds), T padded to a bucket (a handful of compiles, not one per step), and the rollout metrics logged per step."""

from __future__ import annotations

import jax
import numpy as np

from agro_jax.rl import grpo


def _arrays(ro) -> dict:
    names = ("tokens_BxT", "valid_BxT", "loss_mask_BxT", "old_logp_BxT", "group_ids_B", "rewards_B", "num_turns_B")
    out = {k: np.asarray(getattr(ro, k)) for k in names if getattr(ro, k, None) is not None}
    if "valid_BxT" not in out:
        raise ValueError("rollout has no valid_BxT (attention validity mask); the update needs it")
    return out


def bucket_len(t: int, max_len: int, step: int = 128) -> int:
    """Padded T of the update: powers of two up to `step`, then multiples of `step` (a handful of compiles; short
    rollouts are not padded 10x)."""
    if jax.process_count() > 1:  # hosts roll out independently; one global array needs one T on every host
        return max(t, max_len)
    b = 1 << max(t - 1, 0).bit_length() if t <= step else -(-t // step) * step
    return max(t, min(b, max_len))


def pad_t(a: dict, t: int) -> dict:
    return {k: (np.pad(v, [(0, 0), (0, t - v.shape[1])]) if k.endswith("BxT") else v) for k, v in a.items()}


def signal_rows(batch, keep_B, row_multiple: int, max_len: int, aggregation: str = "seq_mean_token_mean"):
    """The update's batch without the rows that carry no loss weight (zero-variance groups): the kept rows first,
    then filtered ones as zero-weight padding up to the smallest of B/4, B/2, 3B/4, B rows that row_multiple (micro-
    batches x batch-sharded devices) divides; T cut to the bucket of the longest kept row. A batch with half its
    groups filtered costs half the update; the loss is unchanged (removed rows had zero mask). Row counts stay four
    per T bucket (a few compiles). Multi-process runs keep every row (hosts would need one agreed count), and so does
    the drgrpo_constant aggregation, whose normalizer counts every row and position of the batch."""
    b = len(keep_B)
    sizes = [n for n in (b // 4, b // 2, 3 * b // 4) if n and n % row_multiple == 0] + [b]
    rows = next(n for n in sizes if n >= max(int(np.sum(keep_B)), 1))
    if jax.process_count() > 1 or rows == b or aggregation == "drgrpo_constant":
        return batch
    order = np.concatenate([np.flatnonzero(keep_B), np.flatnonzero(~np.asarray(keep_B))])[:rows]
    valid_KxT = np.asarray(batch.valid_BxT)[np.asarray(keep_B, bool)]  # padding rows have no weight: they may be cut
    t_max = valid_KxT.shape[1]
    last = int(np.max(t_max - np.argmax(valid_KxT[:, ::-1], 1), initial=1))
    t = min(bucket_len(last, max_len), t_max)
    cut = {k: (v[order][:, :t] if k.endswith("BxT") else v[order]) for k, v in batch.tree().items()}
    return grpo.Batch(**cut)


def informative_rows(rewards_B, group_ids_B, filter_by: str = "reward", correct: float = 1.0) -> np.ndarray:
    """bool_B: rows of groups that teach something. "reward": the group's rewards differ. "accuracy": some samples
    are right (reward >= `correct`) and some are not, DAPO's rule: a group of wrong answers of which some are also
    malformed has reward variance, and its advantages would push the well-formed wrong SQL up."""
    if filter_by == "reward":
        return grpo.filter_zero_variance(rewards_B, group_ids_B)
    if filter_by == "accuracy":
        right_B = (np.asarray(rewards_B, np.float32) >= correct).astype(np.float32)
        return grpo.filter_zero_variance(right_B, group_ids_B)
    raise ValueError(f"config.grpo.filter_by={filter_by!r} must be 'reward' or 'accuracy'")


def collect_rollouts(env, params, data_iter, rng, cfg, correct: float = 1.0):
    """One rollout batch, with uninformative groups (informative_rows by cfg.filter_by; `correct` is the reward of a
    right answer) replaced by informative groups from up to cfg.max_resample_rounds extra rounds (dynamic sampling).
    Groups still uninformative stay in the batch with keep=False (zero loss weight), so the batch shape and the jit
    stay fixed. Returns (arrays, keep_B, first)."""
    timings: dict[str, float] = {}
    calls = [0]
    how = str(getattr(cfg, "filter_by", "reward"))

    def sample(r):
        calls[0] += 1
        raw = env.rollout(params, next(data_iter), jax.random.fold_in(rng, r))
        for k, v in (getattr(raw, "timings", None) or {}).items():
            timings[k] = timings.get(k, 0.0) + float(v)
        return _arrays(raw)

    first = sample(0)
    ro = {k: v.copy() for k, v in first.items()}  # filled in place below; `first` stays as sampled
    keep = np.ones(len(ro["rewards_B"]), bool)
    if cfg.filter_zero_variance:
        keep = informative_rows(ro["rewards_B"], ro["group_ids_B"], how, correct)
        for r in range(1, int(cfg.max_resample_rounds) + 1):
            if keep.all():
                break
            extra = sample(r)
            extra_keep = informative_rows(extra["rewards_B"], extra["group_ids_B"], how, correct)
            t = max(ro["tokens_BxT"].shape[1], extra["tokens_BxT"].shape[1])
            ro, extra = pad_t(ro, t), pad_t(extra, t)
            donors = [g for g in dict.fromkeys(extra["group_ids_B"][extra_keep].tolist())]
            holes = [g for g in dict.fromkeys(ro["group_ids_B"][~keep].tolist())]
            for hole, donor in zip(holes, donors):
                dst = np.flatnonzero(ro["group_ids_B"] == hole)
                src = np.flatnonzero(extra["group_ids_B"] == donor)
                if len(dst) != len(src):
                    continue
                for k, v in ro.items():
                    if k != "group_ids_B":
                        v[dst] = extra[k][src]
                keep[dst] = True
    return Namespace(ro), keep, Namespace(dict(first, timings=timings, rounds=calls[0]))


class Namespace:
    def __init__(self, d):
        self.__dict__.update(d)


def rollout_metrics(ro, reward_cfg, keep_B) -> dict:
    r = np.asarray(ro.rewards_B, np.float64)
    mask = np.asarray(ro.loss_mask_BxT)
    out = {
        "reward_mean": r.mean(),
        "reward_std": r.std(),
        "ex": np.mean(r >= float(reward_cfg.correct)),
        "format_rate": np.mean(r > float(reward_cfg.bad_format)),
        "completion_len": mask.sum(1).mean(),
        "seq_len": np.asarray(ro.valid_BxT).sum(1).mean(),
        "turns": np.asarray(ro.num_turns_B).mean(),
        "kept_frac": np.mean(keep_B),
    }
    if getattr(ro, "group_ids_B", None) is not None:  # rows whose group has right and wrong answers alike
        out["ex_signal_frac"] = np.mean(informative_rows(r, ro.group_ids_B, "accuracy", float(reward_cfg.correct)))
    return {k: float(v) for k, v in out.items()}
