"""The TFDS dataset every stage reads: ArrayRecord files, built and read without TensorFlow.

    path = build_dataset(examples, data_dir)       # examples: records with FIELDS; their "split" picks the TFDS split
    path = import_benchmark("spider", "/data/spider", data_dir, splits=("dev",))   # Spider/BIRD -> same format

Layout: <data_dir>/agro_sql/1.0.0/{agro_sql-<split>.array_record-0000i-of-0000n, dataset_info.json, features.json}.
Read it with agro_jax.data.loader.load_examples / make_prompt_iterator (tfds.builder_from_directory + as_data_source: no
TensorFlow, no import of this module). Benchmark splits map dev -> "test" (and the record's `split` field with it).
"""

from __future__ import annotations

import logging
import os
import shutil

import tensorflow_datasets as tfds

FIELDS = ("question", "sql", "db_id", "db_path", "schema_text", "difficulty", "skeleton", "evidence", "source", "split")
NAME = "agro_sql"
VERSION = "1.0.0"
_BENCH_SPLITS = {"dev": "test", "validation": "test", "test": "test", "train": "train"}


def validate_records(examples: list[dict]) -> None:
    """Every record has every field as a str (clear error naming the record and field otherwise)."""
    for i, ex in enumerate(examples):
        for k in FIELDS:
            if k not in ex:
                raise ValueError(f"example {i} (db_id={ex.get('db_id')!r}) has no field {k!r}; required: {FIELDS}")
            if not isinstance(ex[k], str):
                raise ValueError(f"example {i} field {k!r} must be str, got {type(ex[k]).__name__}")
        if not ex["question"].strip() or not ex["sql"].strip():
            raise ValueError(f"example {i} (db_id={ex['db_id']!r}) has an empty question or sql")


class AgroSql(tfds.core.GeneratorBasedBuilder):
    """Text-to-SQL examples (factory output or imported benchmarks); one TFDS split per distinct `split` value."""

    VERSION = tfds.core.Version(VERSION)

    def __init__(self, *, examples: list[dict] | None = None, **kwargs):
        self._examples = examples or []
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo directly (not dataset_info_from_configs): no metadata files to look up beside the module.
        return tfds.core.DatasetInfo(
            builder=self,
            description="AGRO-SQL text-to-SQL examples: question, gold SQL, database, schema text, difficulty.",
            features=tfds.features.FeaturesDict({k: tfds.features.Text() for k in FIELDS}),
        )

    def _split_generators(self, dl_manager):
        splits = sorted({ex["split"] for ex in self._examples})
        if not splits:
            raise ValueError("AgroSql: no examples to write")
        return {s: self._generate_examples([ex for ex in self._examples if ex["split"] == s]) for s in splits}

    def _generate_examples(self, records):
        for i, ex in enumerate(records):
            yield f"{i:08d}", {k: ex[k] for k in FIELDS}

    # TFDS prints "Downloading and preparing dataset Unknown size ..." for a dataset that downloads nothing (a user
    # reads it as a failed download): at debug level instead; build_dataset's caller says where the data went.
    def _log_download_bytes(self) -> None:
        logging.debug("building TFDS dataset %s in %s", self.name, self.data_dir)

    def _log_download_done(self) -> None:
        logging.debug("TFDS dataset %s written to %s", self.name, self.data_dir)


def build_dataset(examples: list[dict], data_dir: str, overwrite: bool = True) -> str:
    """Writes the examples as ArrayRecord under data_dir; returns the dataset directory."""
    validate_records(examples)
    out = os.path.join(data_dir, NAME, VERSION)
    if os.path.isdir(out):
        if not overwrite:
            return out
        shutil.rmtree(out)
    tfds.disable_progress_bar()
    builder = AgroSql(examples=examples, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    return out


def import_benchmark(kind: str, src_dir: str, data_dir: str, splits=("dev",), schema_compact: bool = False) -> str:
    """Spider/BIRD-format data (agro_jax.sql.benchmark_data loaders) -> the same TFDS format under data_dir."""
    from agro_jax.sql.benchmark_data import load_bird, load_spider
    from agro_jax.sql.schema import render_schema
    from data_factory.synth_sql import skeleton

    loader = {"spider": load_spider, "bird": load_bird}.get(kind)
    if loader is None:
        raise ValueError(f"import_benchmark kind must be 'spider' or 'bird', got {kind!r}")
    records, schema_cache = [], {}
    for split in splits:
        for ex in loader(src_dir, split, schema_text=False):
            if ex["db_path"] not in schema_cache:
                schema_cache[ex["db_path"]] = render_schema(ex["db_path"], compact=schema_compact)
            try:
                skel = skeleton(ex["sql"])
            except Exception:  # noqa: BLE001 -- a few benchmark golds do not parse in sqlglot; keep them anyway
                skel = ""
            rec = {k: str(ex.get(k, "") or "") for k in FIELDS}
            rec.update(schema_text=schema_cache[ex["db_path"]], skeleton=skel, source=kind)
            rec["split"] = _BENCH_SPLITS.get(split, split)
            records.append(rec)
    return build_dataset(records, data_dir)
