"""TFDS ArrayRecord dataset: builds and reads without TensorFlow, round-trips every field, truncation is a clear
error, and the grain prompt iterator resumes exactly."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from agro_jax.data.loader import DataError, dataset_dir, load_examples, make_prompt_iterator
from data_factory.tfds_builder import FIELDS, build_dataset, import_benchmark


def _records(n=53):
    recs = []
    for i in range(n):
        r = {k: f"{k}-{i}" for k in FIELDS}
        r.update(
            question=f'Which "quoted" naïve café #{i}?\nsecond line',
            sql=f"SELECT 'it''s' , {i} -- ünïcode",
            evidence="" if i % 2 else "ext: 年",
            split="test" if i % 4 == 0 else "train",
        )
        recs.append(r)
    return recs


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tfds"))
    recs = _records()
    build_dataset(recs, d)
    return d, recs


def test_tensorflow_is_not_installed():
    assert importlib.util.find_spec("tensorflow") is None
    r = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True, text=True)
    assert r.returncode != 0 and "No module named 'tensorflow'" in r.stderr


def test_round_trip_every_field(built):
    d, recs = built
    for split in ("train", "test"):
        got = load_examples(d, split)
        want = [r for r in recs if r["split"] == split]
        key = lambda r: r["db_id"]
        assert sorted(got, key=key) == sorted(want, key=key)  # every field, exact str (unicode, quotes, newlines)
        assert all(isinstance(v, str) for ex in got for v in ex.values())
    assert "tensorflow" not in sys.modules
    # Accepted spellings of data_dir: the TFDS dir, the versioned dir, the factory dir (holding tfds/).
    assert load_examples(dataset_dir(d), "test") == load_examples(d, "test")
    with pytest.raises(DataError, match="split 'validation' not in"):
        load_examples(d, "validation")
    with pytest.raises(DataError, match="no agro_sql TFDS dataset"):
        load_examples(os.path.dirname(d), "train")
    with pytest.raises(DataError, match="data_dir is empty"):
        load_examples("", "train")


def test_bad_records_are_rejected_by_name(tmp_path):
    recs = _records(3)
    del recs[1]["skeleton"]
    with pytest.raises(ValueError, match="example 1 .* has no field 'skeleton'"):
        build_dataset(recs, str(tmp_path))


def test_truncated_array_record_is_a_clear_error(built, tmp_path):
    import shutil

    d = str(tmp_path / "copy")
    shutil.copytree(built[0], d)
    path = next(
        os.path.join(dataset_dir(d), f) for f in sorted(os.listdir(dataset_dir(d))) if "train.array_record" in f
    )
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(DataError, match=f"ArrayRecord file {re.escape(path)} .*truncated"):
        load_examples(d, "train")
    with open(path, "r+b") as f:  # a cut that leaves a readable header but no records
        f.truncate(1000)
    with pytest.raises(DataError, match=f"ArrayRecord file {re.escape(path)} .*truncated"):
        load_examples(d, "train")
    with pytest.raises(DataError, match="truncated"):
        make_prompt_iterator(d, "train", 4, seed=0)
    assert len(load_examples(d, "test")) == 14  # the intact split still reads
    os.remove(path)
    with pytest.raises(DataError, match="ArrayRecord file missing: .*train.array_record"):
        load_examples(d, "train")


def test_prompt_iterator_resumes_exactly_and_reshuffles(built):
    d, _ = built
    it = make_prompt_iterator(d, "train", batch_size=4, seed=7)
    first = [next(it) for _ in range(5)]
    state = it.get_state()
    json.dumps(state)  # checkpointable as JSON
    cont = [[e["db_id"] for e in next(it)] for _ in range(12)]
    it2 = make_prompt_iterator(d, "train", batch_size=4, seed=7)
    it2.set_state(state)
    assert [[e["db_id"] for e in next(it2)] for _ in range(12)] == cont
    assert all(len(b) == 4 and isinstance(b[0], dict) and b[0]["question"] for b in first)
    # An epoch (39 examples -> 9 full batches) visits distinct examples; the next epoch is a new permutation.
    it3 = make_prompt_iterator(d, "train", batch_size=3, seed=0)
    epochs = [[e["db_id"] for _ in range(13) for e in next(it3)] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) and len(set(epochs[0])) == 39 and epochs[0] != epochs[1]
    once = make_prompt_iterator(d, "train", batch_size=13, seed=0, num_epochs=1)
    assert len(list(once)) == 3
    # Shards (hosts) see disjoint examples.
    shards = [{e["db_id"] for b in make_prompt_iterator(d, "train", 1, 0, 1, i, 2) for e in b} for i in range(2)]
    assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 39


def test_prompt_iterator_excludes_pairs_and_resumes(built):
    """exclude (grpo.prompts "not_in_sft"): the left-out (question, sql) pairs never appear; resume stays exact."""
    d, recs = built
    train = [r for r in recs if r["split"] == "train"]
    out = {(r["question"], r["sql"]) for r in train[::3]}
    once = make_prompt_iterator(d, "train", batch_size=1, seed=0, num_epochs=1, exclude=out)
    seen = [(e["question"], e["sql"]) for b in once for e in b]
    assert len(seen) == len(train) - len(out) and not set(seen) & out and len(set(seen)) == len(seen)
    it = make_prompt_iterator(d, "train", batch_size=4, seed=3, exclude=out)
    [next(it) for _ in range(3)]
    state, cont = it.get_state(), [[e["db_id"] for e in next(it)] for _ in range(8)]
    it2 = make_prompt_iterator(d, "train", batch_size=4, seed=3, exclude=out)
    it2.set_state(state)
    assert [[e["db_id"] for e in next(it2)] for _ in range(8)] == cont


def test_spider_import_same_format(spider_dir, tmp_path):
    path = import_benchmark("spider", str(spider_dir), str(tmp_path), splits=("dev",))
    exs = load_examples(str(tmp_path), "test")
    assert path.endswith("agro_sql/1.0.0") and len(exs) == 972  # dev minus the 62 wta_1 examples (DB missing)
    assert {e["source"] for e in exs} == {"spider"} and {e["split"] for e in exs} == {"test"}
    e = exs[0]
    assert e["schema_text"].startswith("CREATE TABLE") and os.path.isfile(e["db_path"])
    assert sum(bool(x["skeleton"]) for x in exs) > 0.95 * len(exs)
    assert {x["difficulty"] for x in exs} == {"easy", "medium", "hard", "extra"}
