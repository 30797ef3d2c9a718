"""Diversity-aware selection of cold-start trajectories (AGRO-SQL): hybrid embeddings + greedy k-center.

Each trajectory is embedded twice with feature hashing (no model needed, deterministic): its SQL actions by their
skeleton (literals/identifiers abstracted) as 1-3-gram tokens, and its reasoning text as word 1-2-grams. The two
L2-normalised halves are weighted and concatenated into the hybrid embedding; greedy farthest-point (k-center)
selection then picks `k` trajectories that cover the embedding space, so rare query shapes are not drowned out.
"""

from __future__ import annotations

import re
import zlib

import numpy as np
import tqdm

_SQL_TOKEN = re.compile(r"'[^']*'|\"[^\"]*\"|\d+(?:\.\d+)?|\w+|[^\s\w]")
_KEYWORDS = set(
    "select from where group by order having limit join left right inner outer on as and or not in like between "
    "is null distinct count sum avg min max union intersect except exists case when then else end asc desc cast".split()
)


def sql_skeleton_tokens(sql: str) -> list[str]:
    """SQL -> keyword/operator tokens with identifiers -> 'id' and literals -> 'val'."""
    out = []
    for tok in _SQL_TOKEN.findall(sql.lower()):
        if tok[0] in "'\"" or tok[0].isdigit():
            out.append("val")
        elif tok in _KEYWORDS or not (tok[0].isalpha() or tok[0] == "_"):
            out.append(tok)
        else:
            out.append("id")
    return out


def hash_ngrams(tokens: list[str], dim: int, n_max: int) -> np.ndarray:
    """Signed feature hashing of 1..n_max-grams (crc32: stable across runs and processes), L2-normalised."""
    v = np.zeros(dim, np.float32)
    for n in range(1, n_max + 1):
        for i in range(len(tokens) - n + 1):
            h = zlib.crc32(" ".join(tokens[i : i + n]).encode())
            v[h % dim] += 1.0 if (h >> 31) & 1 else -1.0
    norm = np.linalg.norm(v)
    return v / norm if norm > 0 else v


def hybrid_embeddings(sql_actions: list[str], reasoning: list[str], dim: int = 256, sql_weight: float = 0.5):
    """f32[N, 2*dim]: sqrt(w) * sql-skeleton part ++ sqrt(1-w) * reasoning part (unit norm overall)."""
    if len(sql_actions) != len(reasoning):
        raise ValueError(f"hybrid_embeddings: {len(sql_actions)} SQL actions vs {len(reasoning)} reasoning texts")
    s = np.stack([hash_ngrams(sql_skeleton_tokens(q), dim, 3) for q in sql_actions]) if sql_actions else None
    r = np.stack([hash_ngrams(re.findall(r"\w+", t.lower()), dim, 2) for t in reasoning]) if reasoning else None
    if s is None:
        return np.zeros((0, 2 * dim), np.float32)
    return np.concatenate([np.sqrt(sql_weight) * s, np.sqrt(1.0 - sql_weight) * r], 1).astype(np.float32)


def k_center_greedy(emb_NxD: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Greedy farthest-point selection (2-approximation of k-center). Returns k distinct row indices, in pick order.

    The first pick is a seeded random row; each next pick maximises the distance to its nearest picked row
    (ties -> lowest index), so the result is deterministic for a seed.
    """
    n = emb_NxD.shape[0]
    if k >= n:
        return np.arange(n)
    first = int(np.random.default_rng(seed).integers(n))
    picked = [first]
    d_N = np.sum((emb_NxD - emb_NxD[first]) ** 2, axis=1)
    d_N[first] = -1.0  # picked rows are never re-picked, even among exact duplicates
    for _ in tqdm.trange(k - 1, desc="diversity select", leave=False, disable=k < 1000):
        i = int(np.argmax(d_N))
        picked.append(i)
        d_N = np.minimum(d_N, np.sum((emb_NxD - emb_NxD[i]) ** 2, axis=1))
        d_N[i] = -1.0
    return np.asarray(picked)


def coverage_radius(emb_NxD: np.ndarray, picked: np.ndarray) -> float:
    """max over rows of the distance to the nearest picked row (lower = better coverage)."""
    d = ((emb_NxD[:, None, :] - emb_NxD[picked][None]) ** 2).sum(-1)
    return float(np.sqrt(d.min(1).max()))
