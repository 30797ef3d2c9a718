"""Reading the factory's TFDS dataset (ArrayRecord, no TensorFlow) and the grain prompt iterator.

    examples = load_examples(data_dir, "train")          # list of example dicts (str fields)
    it = make_prompt_iterator(data_dir, "train", batch_size=8, seed=0)
    batch = next(it)                                     # list of 8 example dicts
    state = it.get_state(); ...; it.set_state(state)     # exact resume (the state is JSON-serialisable)

`data_dir` may be the TFDS data dir (holding agro_sql/1.0.0), the factory output dir (holding tfds/), or the
versioned dataset dir itself. Shard files are checked against dataset_info.json before reading, so a truncated or
missing ArrayRecord file is an error naming that file (ArrayRecord itself would report 0 records or fail opaquely).
"""

from __future__ import annotations

import os

from agro_jax.errors import UsageError

_NAME, _VERSION = "agro_sql", "1.0.0"


class DataError(UsageError):
    """A missing, incomplete or mismatched dataset: the message names the path (the CLI prints it as one line)."""


def dataset_dir(data_dir: str) -> str:
    if not data_dir:
        raise DataError(
            "data_dir is empty: set config.data.data_dir to the factory's TFDS dir (<workdir>/factory/tfds)"
        )
    for cand in (data_dir, os.path.join(data_dir, _NAME, _VERSION), os.path.join(data_dir, "tfds", _NAME, _VERSION)):
        if os.path.isfile(os.path.join(cand, "dataset_info.json")):
            return cand
    raise DataError(f"no {_NAME} TFDS dataset under {data_dir!r} (expected {_NAME}/{_VERSION}/dataset_info.json)")


def _builder(data_dir: str):
    import tensorflow_datasets as tfds

    return tfds.builder_from_directory(dataset_dir(data_dir))


def available_splits(data_dir: str) -> set[str]:
    """The split names the dataset in data_dir holds."""
    return set(_builder(data_dir).info.splits)


def _check_files(builder, split: str) -> None:
    from array_record.python.array_record_module import ArrayRecordReader

    if split not in builder.info.splits:
        raise DataError(f"split {split!r} not in {builder.data_dir}; splits: {sorted(builder.info.splits)}")
    info = builder.info.splits[split]
    for name, expected in zip(info.filenames, info.shard_lengths, strict=True):
        path = os.path.join(builder.data_dir, name)
        if not os.path.isfile(path):
            raise DataError(f"ArrayRecord file missing: {path}")
        try:
            reader = ArrayRecordReader(path)
            got = reader.num_records()
            reader.close()
        except Exception as e:  # noqa: BLE001 -- whatever the reader raises, name the file
            raise DataError(
                f"ArrayRecord file {path} is unreadable, truncated or corrupt: {type(e).__name__} {e}"
            ) from e
        if got != expected:
            raise DataError(
                f"ArrayRecord file {path} holds {got} records, dataset_info.json says {expected}: truncated or corrupt"
            )


def _decode(ex: dict) -> dict:
    return {k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in ex.items()}


def data_source(data_dir: str, split: str):
    """The split as a random-access source of raw TFDS examples (bytes text fields)."""
    builder = _builder(data_dir)
    _check_files(builder, split)
    return builder.as_data_source(split=split)


def load_examples(data_dir: str, split: str) -> list[dict]:
    source = data_source(data_dir, split)
    try:
        return [_decode(source[i]) for i in range(len(source))]
    except Exception as e:  # noqa: BLE001
        raise DataError(f"reading split {split!r} of {dataset_dir(data_dir)} failed: {e}") from e


def make_prompt_iterator(
    data_dir: str,
    split: str,
    batch_size: int,
    seed: int,
    num_epochs: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    exclude: set | None = None,
):
    """A grain iterator over batches (lists of example dicts), reshuffled every epoch, forever if num_epochs is None.
    Multi-host: each host passes its shard_index/shard_count and sees a disjoint slice. get_state/set_state resume
    exactly (same batches after restore as without interruption). exclude: (question, sql) pairs left out."""
    import grain

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    source = data_source(data_dir, split)
    ds = grain.MapDataset.source(source)
    if exclude:
        keep = [i for i, ex in enumerate(map(_decode, source)) if (ex["question"], ex["sql"]) not in exclude]
        ds = grain.MapDataset.range(len(keep)).map(lambda i: source[keep[i]])
    if shard_count > 1:
        ds = ds[shard_index::shard_count]
    if len(ds) < batch_size:
        raise DataError(f"split {split!r} has {len(ds)} examples (this shard), fewer than batch_size={batch_size}")
    ds = ds.shuffle(seed=seed).repeat(num_epochs).map(_decode)
    ds = ds.batch(batch_size, drop_remainder=True, batch_fn=list)
    return iter(ds.to_iter_dataset())
