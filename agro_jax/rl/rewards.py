"""Outcome rewards for final SQL answers: execution match against the gold query on the executor pool.

reward = reward_cfg.correct     if the prediction's result matches gold's (compare mode reward_cfg.compare_mode)
         reward_cfg.wrong       if it parses but errors or returns a different result
         reward_cfg.bad_format  if there is no SQL (None: the agent never answered) or sqlglot cannot parse it
Gold queries go through the executor's gold cache. In spider/tolerant modes both queries run with DISTINCT
stripped, as the official Spider evaluator does (see agro_jax/sql/compare.py).
"""

from __future__ import annotations

import numpy as np
import sqlglot

from agro_jax.sql.compare import compare, spider_exec_sql
from agro_jax.sql.executor import Query


def sql_parses(sql: str) -> tuple[bool, str]:
    """(ok, message): one parseable statement in the sqlite dialect."""
    if not sql or not sql.strip():
        return False, "empty SQL"
    try:
        trees = [t for t in sqlglot.parse(sql, read="sqlite") if t is not None]
    except Exception as e:  # noqa: BLE001 -- sqlglot raises several error types
        return False, f"sqlglot: {str(e)[:200]}"
    if len(trees) != 1:
        return False, f"expected one statement, got {len(trees)}"
    return True, ""


def _cfg(reward_cfg, key, default):
    try:
        return reward_cfg[key]
    except (KeyError, AttributeError, TypeError):
        return getattr(reward_cfg, key, default)


def compute_rewards(final_sqls, gold_sqls, db_paths, executor, reward_cfg, check_syntax: bool = True):
    """-> (rewards float32[B], infos: list of dicts with matched/error_kind/error_message/reason per example).

    check_syntax=False skips the sqlglot gate (evaluation: the official scripts just execute).
    """
    if not len(final_sqls) == len(gold_sqls) == len(db_paths):
        raise ValueError(
            f"compute_rewards: final_sqls ({len(final_sqls)}), gold_sqls ({len(gold_sqls)}) and db_paths "
            f"({len(db_paths)}) must have the same length"
        )
    mode = _cfg(reward_cfg, "compare_mode", "bird")
    correct, wrong, bad = (
        float(_cfg(reward_cfg, k, d)) for k, d in (("correct", 1.0), ("wrong", 0.0), ("bad_format", -1.0))
    )
    prep = (lambda s: s) if mode == "bird" else spider_exec_sql
    rewards = np.full(len(final_sqls), wrong, np.float32)
    infos: list[dict] = [{} for _ in final_sqls]
    to_run = []
    for i, sql in enumerate(final_sqls):
        if sql is None:
            rewards[i], infos[i] = bad, dict(matched=False, reason="no_answer", error_kind=None, error_message="")
            continue
        ok, msg = sql_parses(sql) if check_syntax else (True, "")
        if not ok:
            rewards[i], infos[i] = (
                bad,
                dict(matched=False, reason="unparseable", error_kind="syntax", error_message=msg),
            )
            continue
        to_run.append(i)
    preds = executor.run_many([Query(db_paths[i], prep(final_sqls[i])) for i in to_run])
    golds = executor.run_many([Query(db_paths[i], prep(gold_sqls[i])) for i in to_run], use_cache=True)
    for i, pred, gold in zip(to_run, preds, golds):
        matched = compare(pred, gold, mode, gold_sqls[i])
        rewards[i] = correct if matched else wrong
        reason = "match" if matched else ("pred_error" if not pred.ok else "gold_error" if not gold.ok else "mismatch")
        infos[i] = dict(
            matched=matched,
            reason=reason,
            error_kind=pred.error_kind,
            error_message=pred.error_message or (gold.error_message if not gold.ok else ""),
            gold_error_kind=gold.error_kind,
            pred_elapsed_s=pred.elapsed_s,
        )
    return rewards, infos
