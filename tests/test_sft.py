"""Cold start: diversity-aware selection (hybrid embeddings, k-center) and the SFT stage."""

import numpy as np

from agro_jax import sft_select


def test_skeleton_abstracts_identifiers_and_literals():
    a = sft_select.sql_skeleton_tokens("SELECT name FROM student WHERE age > 20 AND city = 'Oslo'")
    b = sft_select.sql_skeleton_tokens("select title from book where pages > 3.5 and author = 'X'")
    assert a == b
    assert a[:4] == ["select", "id", "from", "id"] and "val" in a


def test_k_center_covers_rare_clusters_better_than_random():
    # 95 near-duplicate simple queries + 5 rare shapes: k-center must pick every rare shape, random rarely does.
    sqls = [f"SELECT name FROM t{i} WHERE a = {i}" for i in range(95)]
    rare = [
        "SELECT a, COUNT(*) FROM t GROUP BY a HAVING COUNT(*) > 2 ORDER BY a DESC LIMIT 3",
        "SELECT x FROM a JOIN b ON a.id = b.id JOIN c ON b.id = c.id WHERE c.v IN (SELECT v FROM d)",
        "SELECT AVG(p) FROM q WHERE r BETWEEN 1 AND 5 UNION SELECT MAX(p) FROM q",
        "SELECT CASE WHEN a > 1 THEN 'x' ELSE 'y' END FROM t EXCEPT SELECT b FROM u",
        "SELECT DISTINCT c FROM t WHERE d LIKE '%a%' AND e IS NOT NULL",
    ]
    reasoning = ["look up the name"] * 95 + [f"reason about shape {i}" for i in range(5)]
    emb = sft_select.hybrid_embeddings(sqls + rare, reasoning, dim=128)
    assert emb.shape == (100, 256)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    picked = sft_select.k_center_greedy(emb, 8, seed=0)
    assert len(set(picked.tolist())) == 8
    assert set(range(95, 100)) <= set(picked.tolist())
    rand = np.random.default_rng(0).choice(100, 8, replace=False)
    assert sft_select.coverage_radius(emb, picked) < sft_select.coverage_radius(emb, rand)
    # Deterministic for a seed.
    assert (sft_select.k_center_greedy(emb, 8, seed=0) == picked).all()
