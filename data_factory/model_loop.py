"""The model in the factory loop: one policy (HF dir or GGUF) behind `generate_fn(prompts) -> completions`, batched
through the project's KV-cache Sampler, and the factory components built from config.factory.

    policy = Policy.load("~/.cache/agro_jax/models/qwen2.5-coder-0.5b-instruct/hf", batch_size=8, seed=0)
    writer = policy.generate_fn(0.7, 64, "questions")                       # sampled
    reader = policy.generate_fn(0.0, 128, "check SQL", SQL_PREFIX, SQL_STOPS)  # greedy, answer inside a sql fence

Each prompt becomes one user turn of the model's chat template (after a one-line system turn); completions end at
the chat template's end-of-turn token (the checker's also at the closing fence). Prompts are sorted by length and cut
into chunks of `batch_size`; a short last chunk is filled up with copies, so every call uses one batch bucket (on CPU
a filler row costs ~1-2 s of prefill, a new compile of the 0.5B model ~40-90 s) and each prompt bucket compiles once.
Sampling keys are a hash of each chunk's prompts: the same prompts give the same completions, so a resumed factory
run repeats a killed one. `components(fcfg, seed)` -> (question_generator, checker, judge, policy) for run_factory.
"""

from __future__ import annotations

import pathlib
import time
import zlib

SYSTEM = "You are a careful SQLite expert who writes precise questions and queries."
STOP_STRINGS = ("<|im_end|>", "<|endoftext|>")  # Qwen2.5 chat: end of turn / end of text (one token each)
# The checker's answer starts inside a ```sql fence (assistant prefix), so the closing fence ends it: every spelling of
# it that Qwen's tokenizer has as one token ("```", "``" + "`\n", " ```\n", " ```") stops the row on device, instead
# of the row running on into an explanation while the batch waits.
SQL_PREFIX, SQL_STOPS = "```sql\n", (*STOP_STRINGS, "```", "``", " ```\n", " ```")


class Policy:
    """A loaded model + tokenizer + Samplers (one per stop set). `complete(prompts, temperature, max_new_tokens,
    prefix=, stops=)` -> completions (prefix + generated text, special tokens dropped)."""

    def __init__(self, model, tokenizer, *, batch_size: int = 8, seed: int = 0, max_prompt_len: int = 2048):
        from flax import nnx

        self.graphdef, self.params, self.rest = nnx.split(model, nnx.Param, ...)
        self.model_cfg, self.tokenizer = model.cfg, tokenizer
        self.batch_size, self.seed, self.max_prompt_len = max(1, int(batch_size)), int(seed), int(max_prompt_len)
        self._samplers: dict[tuple, object] = {}
        self.stats = dict(calls=0, prompts=0, prompt_tokens=0, new_tokens=0, seconds=0.0, truncated=0)

    def sampler(self, stops: tuple = STOP_STRINGS):
        from ml_collections import ConfigDict

        from agro_jax.rollout.sampler import Sampler

        if stops not in self._samplers:
            cfg = ConfigDict(dict(max_new_tokens_per_turn=128, temperature=0.0, top_p=1.0, top_k=0,
                                  min_prompt_bucket=64))  # fmt: skip
            self._samplers[stops] = Sampler(
                self.graphdef, self.rest, self.model_cfg, self.tokenizer, cfg, stop_strings=stops,
                model_fn=_last_logits_fn(self.graphdef, self.rest), init_cache=_init_cache(self.model_cfg),
            )  # fmt: skip
        return self._samplers[stops]

    @classmethod
    def load(cls, path, **kw) -> Policy:
        """From an HF dir or a GGUF file (converted once, see agro_jax.model.real_model.resolve_model_path); float32
        params on one device (CPU: bf16 matmuls are slower there)."""
        from agro_jax.model.hf_io import load_hf_checkpoint
        from agro_jax.model.tokenizer import load_tokenizer

        hf = _resolve(path)
        model, _ = load_hf_checkpoint(hf, dtype="float32", param_dtype="float32")
        return cls(model, load_tokenizer(str(hf)), **kw)

    def chat_ids(self, prompt: str, prefix: str = "") -> list[int]:
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
        text = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) + prefix
        ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        if len(ids) > self.max_prompt_len:
            raise ValueError(f"factory prompt of {len(ids)} tokens is longer than max_prompt_len={self.max_prompt_len}")
        return ids

    def complete(self, prompts: list[str], temperature: float, max_new_tokens: int, desc: str = "", prefix: str = "",
                 stops: tuple = STOP_STRINGS) -> list[str]:  # fmt: skip
        import jax
        from tqdm import tqdm

        if not prompts:
            return []
        t0 = time.perf_counter()
        sampler = self.sampler(tuple(stops))
        ids = [self.chat_ids(p, prefix) for p in prompts]
        order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
        out: list[str] = [""] * len(ids)
        bar = tqdm(total=len(ids), desc=desc or "model", unit="prompt", leave=False, disable=len(ids) < 2)
        for s in range(0, len(order), self.batch_size):
            chunk = order[s : s + self.batch_size]
            key = zlib.crc32("\x00".join(prompts[i] for i in chunk).encode())
            rng = jax.random.fold_in(jax.random.key(self.seed), key & 0x7FFFFFFF)
            rows = [ids[i] for i in chunk]
            rows += [rows[-1]] * (self.batch_size - len(rows))  # one batch bucket (see the module docstring)
            res = sampler.generate(self.params, rows, rng, temperature=float(temperature),
                                   max_new_tokens=int(max_new_tokens))  # fmt: skip
            for j, i in enumerate(chunk):
                toks = res.tokens[j]  # the stop token (end of turn, closing fence) is dropped; an open fence parses
                toks = toks[:-1] if res.stopped[j] and toks and toks[-1] in sampler.stop_ids else toks
                out[i] = prefix + self.tokenizer.decode(toks, skip_special_tokens=True)
                self.stats["new_tokens"] += len(res.tokens[j])
                self.stats["truncated"] += int(not res.stopped[j])
            bar.update(len(chunk))
        bar.close()
        self.stats["calls"] += 1
        self.stats["prompts"] += len(ids)
        self.stats["prompt_tokens"] += sum(len(x) for x in ids)
        self.stats["seconds"] += time.perf_counter() - t0
        return out

    def generate_fn(self, temperature: float, max_new_tokens: int, desc: str = "", prefix: str = "",
                    stops: tuple = STOP_STRINGS):  # fmt: skip
        return lambda prompts: self.complete(list(prompts), temperature, max_new_tokens, desc, prefix, stops)


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
        fn = policy.generate_fn(0.0, int(_get(fcfg, "sql_max_new_tokens", 128)), "check SQL", SQL_PREFIX, SQL_STOPS)
        checker = ModelChecker(fn, compact)
    # auto: rules for model-written questions (ModelJudge measured too weak on the 0.5B model); none for the rule
    # realizer, whose questions hold only schema words by construction.
    judge = {"rules": RuleJudge(), "none": None, "auto": RuleJudge() if qkind == "model" else None}.get(jkind)
    if jkind == "model":
        judge = ModelJudge(policy.generate_fn(0.0, 8, "judge"), compact)
    return qgen, checker, judge, policy
