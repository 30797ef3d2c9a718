"""Stop strings on device (rollout/stops.py): a turn ends on the token that completes `</sql>` / `</answer>` in any
tokenization, with the embedded BPE (added tag tokens, or the tag spelled in pieces) and with Qwen2.5's tokenizer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from agro_jax.model.tokenizer import train_tokenizer
from agro_jax.rollout import agent, stops
from agro_jax.rollout.sampler import Sampler

# The text is forced token by token; the turn must end on the token after which the decoded text first holds a stop.
TEXTS = [
    "<think>a</think>\n<sql>SELECT name FROM t;</sql>\n\nnever seen",
    "<think>b</think>\n<sql>SELECT count(*) FROM t WHERE x = 'a')</sql>more",
    "ok <answer>SELECT 1</answer>\ntrailing",
    "```sql\nSELECT 2\n```\n<answer>SELECT 2 </answer> after",
    "no stop at all in this one </sq l> <ans wer>",
]


class ForcedTokens:
    """A model_fn forcing params["ids"] on every row, whatever the context (generated count -> token); params carry
    the text, so one Sampler (one compile) serves every text."""

    def __init__(self, vocab):
        self.vocab = vocab

    def init_cache(self, batch, max_len):
        return jnp.zeros((batch, max_len), jnp.int32)

    def __call__(self, params, tokens_BxT, positions_BxT, mask_BxTxS, cache, cache_index, last_B):
        step_B = jnp.take_along_axis(positions_BxT, last_B[:, None], 1)[:, 0] - params["prompt_len"] + 1
        nxt_B = params["ids"][jnp.clip(step_B, 0, params["ids"].shape[0] - 1)]
        return jnp.where(jnp.arange(self.vocab)[None] == nxt_B[:, None], 30.0, -30.0), cache


def expected_end(tok, ids, stop_strings) -> int | None:
    """Reference on the host: length of the shortest prefix whose decoded text contains a stop string."""
    for k in range(1, len(ids) + 1):
        if any(s in tok.decode(ids[:k], skip_special_tokens=False) for s in stop_strings):
            return k
    return None


def check_tokenizer(tok, texts, split_tags=False):
    """Every text: the device matcher (through Sampler.generate's decode loop) ends where the host reference does."""
    cfg = ConfigDict({"max_new_tokens_per_turn": 48, "temperature": 0.0, "min_prompt_bucket": 8})
    policy = ForcedTokens(len(tok))
    sampler = Sampler(None, None, None, tok, cfg, model_fn=policy, init_cache=policy.init_cache)
    prompt = tok.encode("Q?", add_special_tokens=False)
    filler = tok.encode("x", add_special_tokens=False)[0]
    seen = set()
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        if split_tags:  # the tag spelled byte by byte (a policy may sample it that way)
            ids = [i for piece in ("<", "/", "sql", ">") for i in tok.encode(piece, add_special_tokens=False)]
            ids = tok.encode(text.split("</sql>")[0], add_special_tokens=False) + ids + tok.encode("x\n")
        forced = jnp.asarray((ids + [filler] * 64)[:64], jnp.int32)
        out = sampler.generate({"prompt_len": len(prompt), "ids": forced}, [prompt], jax.random.key(0))
        want = expected_end(tok, ids, agent.STOP_STRINGS)
        assert out.tokens[0] == (ids[:want] if want else (ids + [filler] * 48)[:48]), text
        assert out.kinds[0] == (2 if want else 0) and out.stopped[0] == bool(want)
        if want:
            seen.add(tok.convert_ids_to_tokens(ids[want - 1]))
    assert sampler.traces == {"prefill": 1, "decode": 1}
    return seen


@pytest.fixture(scope="module")
def tiny_tok(tmp_path_factory):
    texts = [agent.SYSTEM_PROMPT, "SELECT name FROM t WHERE x = 'a'; count(*) ```sql trailing never seen"] * 10
    return train_tokenizer(texts, 320, str(tmp_path_factory.mktemp("tok")), added_tokens=agent.AGENT_TAGS)


def test_token_bytes_reproduce_decode(tiny_tok):
    table = stops.token_bytes(tiny_tok)
    ids = tiny_tok.encode("".join(TEXTS) + " é ü 中文", add_special_tokens=False)
    assert b"".join(table[i] for i in ids).decode("utf-8") == tiny_tok.decode(ids, skip_special_tokens=False)


def test_tiny_tokenizer_stops_on_the_completing_token(tiny_tok):
    seen = check_tokenizer(tiny_tok, TEXTS)
    assert seen == {"</sql>", "</answer>"}  # the added tag tokens
    seen = check_tokenizer(tiny_tok, TEXTS[:2], split_tags=True)
    assert seen == {">"}  # the tag in pieces ends on its last piece


def test_step_matches_across_token_boundaries():
    """Unit check of stops.step on a hand-made vocabulary: the stop split 1+5, 3+3, 5+1, inside one token, after a
    prefix, and a near miss."""

    class Tok:
        vocab = ["</", "sql", ">", "</sql>", "x</s", "ql>Ċ", ";", "</sq", "l", "q>"]
        added_tokens_decoder = {}

        def __len__(self):
            return len(self.vocab)

        def convert_ids_to_tokens(self, ids):
            return [self.vocab[i] for i in ids]

    t = stops.build_tables(Tok(), ["</sql>"])
    dev = t.device()
    for seq, hit_at in [([0, 1, 2], 2), ([3], 0), ([6, 4, 5], 2), ([7, 8, 2], 2), ([7, 9], None), ([6, 6], None)]:
        tail = stops.init_tail(1, 5)
        hits = []
        for tok_id in seq:
            hit, tail = stops.step(dev, t.stops, tail, jnp.asarray([tok_id]))
            hits.append(bool(hit[0]))
        assert hits.index(True) == hit_at if hit_at is not None else not any(hits), seq


@pytest.mark.real_model
def test_real_qwen_tokenizer_stops_on_the_completing_token(real_qwen_dir):
    from agro_jax.model.tokenizer import load_tokenizer

    tok = load_tokenizer(str(real_qwen_dir))
    seen = check_tokenizer(tok, TEXTS)
    # Qwen2.5 spells the tags in pieces (`</` or `;</`, `)</`, ...; `sql`; `>`); the completing token may carry the
    # newlines that follow (`>Ċ`, `>ĊĊ`): matching token ids would have missed all of these.
    assert seen == {">", ">Ċ", ">ĊĊ"}, seen
    ids = tok.encode("SELECT 1;</sql>", add_special_tokens=False)
    assert len(ids) > 1 and tok.convert_ids_to_tokens(ids)[-3:] == [";</", "sql", ">"]
    table = stops.token_bytes(tok)
    np.testing.assert_equal(b"".join(table[i] for i in ids), b"SELECT 1;</sql>")
