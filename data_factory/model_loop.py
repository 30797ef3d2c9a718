"""The model in the factory loop: one policy (HF dir or GGUF) behind `generate_fn(prompts) -> completions`, batched
through the project's KV-cache Sampler, and the factory components built from config.factory.

    policy = Policy.load("~/.cache/agro_jax/models/qwen2.5-coder-0.5b-instruct/hf", batch_size=8, seed=0)
    writer = policy.generate_fn(temperature=0.8, max_new_tokens=64, desc="questions")   # sampled
    reader = policy.generate_fn(temperature=0.0, max_new_tokens=128, desc="check SQL")  # greedy
    qgen, checker, judge = components(config.factory, seed)      # what run_factory uses when none is passed

Each prompt becomes one user turn of the model's chat template (after a one-line system turn); completions end at
the chat template's end-of-turn token. Prompts are sorted by length and cut into chunks of `batch_size`, so a chunk's
padding is small and the sampler's batch/prompt buckets repeat (one compile per bucket). Sampling keys are a hash of
each chunk's prompts: the same prompts give the same completions, so a resumed factory run repeats a killed one.
"""

from __future__ import annotations

import pathlib
import time
import zlib

SYSTEM = "You are a careful SQLite expert who writes precise questions and queries."
STOP_STRINGS = ("<|im_end|>", "<|endoftext|>")  # Qwen2.5 chat: end of turn / end of text (one token each)


class Policy:
    """A loaded model + tokenizer + Sampler. `complete(prompts, temperature, max_new_tokens)` -> completions."""

    def __init__(self, model, tokenizer, *, batch_size: int = 8, seed: int = 0, max_prompt_len: int = 2048):
        from flax import nnx
        from ml_collections import ConfigDict

        from agro_jax.rollout.sampler import Sampler

        graphdef, self.params, rest = nnx.split(model, nnx.Param, ...)
        self.tokenizer, self.batch_size, self.seed = tokenizer, max(1, int(batch_size)), int(seed)
        self.max_prompt_len = int(max_prompt_len)
        cfg = ConfigDict(dict(max_new_tokens_per_turn=128, temperature=0.0, top_p=1.0, top_k=0, min_prompt_bucket=64))
        self.sampler = Sampler(graphdef, rest, model.cfg, tokenizer, cfg, model_fn=_last_logits_fn(graphdef, rest),
                               init_cache=_init_cache(model.cfg), stop_strings=STOP_STRINGS)  # fmt: skip
        self.stats = dict(calls=0, prompts=0, prompt_tokens=0, new_tokens=0, seconds=0.0, truncated=0)

    @classmethod
    def load(cls, path, **kw) -> Policy:
        """From an HF dir or a GGUF file (converted once, see agro_jax.model.real_model.resolve_model_path); float32
        params on one device (CPU: bf16 matmuls are slower there)."""
        from agro_jax.model.hf_io import load_hf_checkpoint
        from agro_jax.model.tokenizer import load_tokenizer

        hf = _resolve(path)
        model, _ = load_hf_checkpoint(hf, dtype="float32", param_dtype="float32")
        return cls(model, load_tokenizer(str(hf)), **kw)

    def chat_ids(self, prompt: str) -> list[int]:
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
        text = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        if len(ids) > self.max_prompt_len:
            raise ValueError(f"factory prompt of {len(ids)} tokens is longer than max_prompt_len={self.max_prompt_len}")
        return ids

    def complete(self, prompts: list[str], temperature: float, max_new_tokens: int, desc: str = "") -> list[str]:
        import jax
        from tqdm import tqdm

        if not prompts:
            return []
        t0 = time.perf_counter()
        ids = [self.chat_ids(p) for p in prompts]
        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
        out: list[str] = [""] * len(ids)
        bar = tqdm(total=len(ids), desc=desc or "model", unit="prompt", leave=False, disable=len(ids) < 2)
        for s in range(0, len(order), self.batch_size):
            chunk = order[s : s + self.batch_size]
            key = zlib.crc32("\x00".join(prompts[i] for i in chunk).encode())
            rng = jax.random.fold_in(jax.random.key(self.seed), key & 0x7FFFFFFF)
            res = self.sampler.generate(self.params, [ids[i] for i in chunk], rng, temperature=float(temperature),
                                        max_new_tokens=int(max_new_tokens))  # fmt: skip
            for j, i in enumerate(chunk):
                toks = [t for t in res.tokens[j] if t not in self.sampler.stop_ids]
                out[i] = self.tokenizer.decode(toks, skip_special_tokens=True)
                self.stats["new_tokens"] += len(res.tokens[j])
                self.stats["truncated"] += int(not res.stopped[j])
            bar.update(len(chunk))
        bar.close()
        self.stats["calls"] += 1
        self.stats["prompts"] += len(ids)
        self.stats["prompt_tokens"] += sum(len(x) for x in ids)
        self.stats["seconds"] += time.perf_counter() - t0
        return out

    def generate_fn(self, temperature: float, max_new_tokens: int, desc: str = ""):
        return lambda prompts: self.complete(list(prompts), temperature, max_new_tokens, desc)


def _resolve(path) -> pathlib.Path:
    from agro_jax.model.real_model import real_model_hf_dir, resolve_model_path

    return pathlib.Path(resolve_model_path(path or real_model_hf_dir()))


def _last_logits_fn(graphdef, rest):
    """The sampler reads only the last position's logits: compute just those, so a prefill of B x P tokens never holds
    B x P x V float32 (8 x 512 x 151,936 x 4 B = 2.5 GB at Qwen's vocab)."""
    from flax import nnx

    def model_fn(params, tokens, positions, mask, cache, cache_index):
        model = nnx.merge(graphdef, params, rest)
        if not hasattr(model, "hidden"):
            return model(tokens, positions, mask, cache, cache_index)
        hidden_BxTxD, cache = model.hidden(tokens, positions, mask, cache, cache_index)
        return model.logits(hidden_BxTxD[:, -1:]), cache

    return model_fn


def _init_cache(model_cfg):
    from agro_jax.model.kv_cache import KVCache

    return lambda batch, max_len: KVCache.init(model_cfg, batch, max_len, model_cfg.dtype)


def _get(cfg, key, default):
    return cfg[key] if key in cfg else default


def components(fcfg, seed: int = 0, log=print):
    """(question_generator, checker, judge, policy | None) for config.factory: rules unless question_generator /
    checker / judge say model; the model is loaded once (factory.model_path: HF dir or GGUF; "" = the real model)."""
    from agro_jax.errors import UsageError
    from data_factory.checker import ModelChecker, RuleChecker
    from data_factory.judge import ModelJudge, RuleJudge
    from data_factory.synth_question import ModelQuestionGenerator, RuleQuestionGenerator

    qkind, ckind = str(_get(fcfg, "question_generator", "rules")), str(_get(fcfg, "checker", "rules"))
    jkind = str(_get(fcfg, "judge", "auto"))
    two = ("rules", "model")
    for name, kind, allowed in (("question_generator", qkind, two), ("checker", ckind, two),
                                ("judge", jkind, ("auto", "none", *two))):  # fmt: skip
        if kind not in allowed:
            raise UsageError(f"config.factory.{name}={kind!r}: expected one of {', '.join(allowed)}")
    if qkind == "model" and ckind == "rules":
        raise UsageError("config.factory.checker='rules' parses only the rule realizer's phrasings; with "
                         "question_generator='model' set checker='model'")  # fmt: skip
    policy = None
    if "model" in (qkind, ckind, jkind):
        t0 = time.perf_counter()
        policy = Policy.load(_get(fcfg, "model_path", ""), batch_size=int(_get(fcfg, "model_batch_size", 8)), seed=seed)
        log(f"[factory] model {_resolve(_get(fcfg, 'model_path', ''))} loaded in {time.perf_counter() - t0:.1f} s")
    compact = bool(_get(fcfg, "schema_compact", True))
    qgen = RuleQuestionGenerator(seed)
    if qkind == "model":
        fn = policy.generate_fn(float(_get(fcfg, "model_temperature", 0.8)),
                                int(_get(fcfg, "question_max_new_tokens", 64)), "questions")  # fmt: skip
        qgen = ModelQuestionGenerator(fn, qgen, compact, seed)
    checker = RuleChecker()
    if ckind == "model":
        fn = policy.generate_fn(0.0, int(_get(fcfg, "sql_max_new_tokens", 128)), "check SQL")
        checker = ModelChecker(fn, compact)
    # auto: rules for model-written questions (ModelJudge measured too weak on the 0.5B model); none for the rule
    # realizer, whose questions hold only schema words by construction.
    judge = {"rules": RuleJudge(), "none": None, "auto": RuleJudge() if qkind == "model" else None}.get(jkind)
    if jkind == "model":
        judge = ModelJudge(policy.generate_fn(0.0, 8, "judge"), compact)
    return qgen, checker, judge, policy
