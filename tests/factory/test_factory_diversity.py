"""Dedup, difficulty-mix sampling (within 5%), skeleton statistics, held-out split without leaked structures."""

import random

import pytest

from data_factory import diversity
from data_factory.databases import DOMAINS, build_databases
from data_factory.synth_sql import LEVELS, DbContext, synthesize


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    paths = build_databases(str(tmp_path_factory.mktemp("dbs")), DOMAINS, seed=0)
    rng = random.Random(0)
    cands = [c for p in paths.values() for c in synthesize(DbContext(p), 150, rng)]
    kept, _ = diversity.dedup(cands)
    return kept


def test_dedup_exact_and_literal_variants(pool):
    c = pool[0]
    twin = type(c)(**{**vars(c), "sql": c.sql.lower()})  # same SQL up to case/spacing
    assert diversity.dedup([c, twin])[0] == [c]
    keys = [diversity.query_key(x) for x in pool]
    assert len(keys) == len(set(keys))  # at most one example per literal-masked query (max_per_query=1)
    assert len(diversity.dedup(pool + pool, max_per_query=2)[0]) == len(pool)


@pytest.mark.parametrize(
    "mix",
    [
        {"simple": 0.3, "moderate": 0.35, "complex": 0.25, "highly_complex": 0.1},
        {"simple": 0.1, "moderate": 0.2, "complex": 0.3, "highly_complex": 0.4},
        {"simple": 0.5, "moderate": 0.5},
    ],
)
def test_sampling_hits_the_mix_within_5_percent(pool, mix):
    picked = diversity.sample_mix(pool, mix, 200, seed=1)
    assert len(picked) == 200
    assert diversity.mix_error(picked, mix) <= 0.05
    assert len({id(x) for x in picked}) == 200
    assert picked == diversity.sample_mix(pool, mix, 200, seed=1)  # deterministic


def test_short_bucket_shrinks_total_but_keeps_mix(pool):
    mix = {"simple": 0.5, "highly_complex": 0.5}
    few_hard = [c for c in pool if c.difficulty == "simple"] + [c for c in pool if c.difficulty == "highly_complex"][
        :20
    ]
    picked = diversity.sample_mix(few_hard, mix, 200, seed=0)
    assert len(picked) == 40 and diversity.mix_error(picked, mix) <= 0.05
    with pytest.raises(ValueError, match="unknown difficulty levels"):
        diversity.sample_mix(pool, {"easy": 1.0}, 10)


def test_skeleton_round_robin_beats_random_on_distinct_skeletons(pool):
    mix = {"simple": 0.3, "moderate": 0.35, "complex": 0.25, "highly_complex": 0.1}
    picked = diversity.sample_mix(pool, mix, 150, seed=0)
    rng = random.Random(0)
    rand = []
    for lv, k in diversity.target_counts(mix, 150).items():
        rand += rng.sample([c for c in pool if c.difficulty == lv], k)
    stats, rand_stats = diversity.skeleton_stats(picked, pool), diversity.skeleton_stats(rand, pool)
    assert stats["distinct_skeletons"] > rand_stats["distinct_skeletons"]
    assert 0 < stats["distinct_skeleton_ratio"] <= 1 and 0 < stats["skeleton_coverage"] <= 1
    assert sum(diversity.histogram(picked).values()) == 150 and set(diversity.histogram(picked)) <= set(LEVELS)


@pytest.mark.parametrize("by", ["skeleton", "db", "query"])
def test_heldout_split_has_no_shared_groups(pool, by):
    train, test = diversity.split_heldout(pool, 0.2, by=by, seed=0)
    assert len(train) + len(test) == len(pool)
    group = {"skeleton": lambda e: e.skeleton, "db": lambda e: e.db_id, "query": diversity.query_key}[by]
    assert not {group(e) for e in train} & {group(e) for e in test}
    lo = 0.05 if by == "db" else 0.12  # whole DBs are coarse groups
    assert lo <= len(test) / len(pool) <= 0.35
    with pytest.raises(ValueError, match="heldout_by"):
        diversity.split_heldout(pool, 0.2, by="nope")


def test_literal_split_holds_out_new_literals_of_seen_queries(tmp_path):
    paths = build_databases(str(tmp_path), DOMAINS[:3], seed=0)
    rng = random.Random(1)
    cands = [c for p in paths.values() for c in synthesize(DbContext(p), 300, rng)]
    kept, _ = diversity.dedup(cands, max_per_query=3)
    train, test = diversity.split_heldout(kept, 0.1, by="literal", seed=0)
    assert len(train) + len(test) == len(kept) and 0.05 <= len(test) / len(kept) <= 0.15
    train_queries, train_sql = {diversity.query_key(e) for e in train}, {(e.db_id, e.sql) for e in train}
    assert all(diversity.query_key(e) in train_queries for e in test)  # each test query's structure is trained on...
    assert not {(e.db_id, e.sql) for e in test} & train_sql  # ...with other literal values
    assert len({diversity.query_key(e) for e in test}) == len(test)  # at most one test example per query
    assert diversity.split_heldout(kept, 0.1, by="literal", seed=0) == (train, test)
