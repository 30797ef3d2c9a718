"""The one agent protocol (AGRO-SQL / SkyRL-SQL style): think -> sql -> observation -> ... -> answer.

A trajectory is ONE assistant message. The model writes `<think>…</think>` then either `<sql>…</sql>` (a query the
host runs) or `<answer>…</answer>` (the final SQL, plain or wrapped in `<sql>`). After a `<sql>` turn the host appends
`observation_text(...)` = `\\n<observation>…</observation>\\n` (rows as a compact table, or the error), and the model
continues. Agent tokens (trained on) are the model's own turns; observation and prompt tokens are context only.

Pieces are tokenized separately and concatenated, both here (SFT targets) and in rollout/loop.py (RL), so the token
boundaries the policy is trained on are the ones it samples with.
"""

from __future__ import annotations

import dataclasses
import re

AGENT_TAGS = ["<think>", "</think>", "<sql>", "</sql>", "<observation>", "</observation>", "<answer>", "</answer>"]
# A turn ends on the token that completes the first of these (or EOS), matched on device whatever the tokenization
# (rollout/stops.py).
STOP_STRINGS = ("</sql>", "</answer>")
# rollout.answer_format: "tags" (strict: only <answer>, the training reward's default) | "tags_or_fence" (evaluating
# off-the-shelf models: a turn without agent tags whose text has a ```sql block answers with the last such block).
ANSWER_FORMATS = ("tags", "tags_or_fence")

SYSTEM_PROMPT = """You are a careful SQLite expert. Answer the user's question with one SQL query over the database.
Work in turns. In each turn first reason inside <think>...</think>, then do exactly one of:
- explore: write one SQL query inside <sql>...</sql>. It is executed and you get the result (or the error) inside
  <observation>...</observation>. Explore only as much as you need; turns are limited.
- finish: write the final SQL query inside <answer>...</answer>.
Only the query inside <answer> is graded, by executing it. Use only tables and columns from the schema."""


@dataclasses.dataclass(frozen=True)
class Action:
    kind: str  # "sql" (explore) | "answer" (final) | "invalid" (no complete tag: bad format)
    sql: str | None


def build_messages(schema_text: str, question: str, evidence: str = "") -> list[dict]:
    """Chat messages (system + user) for one example; render with the tokenizer's chat template. The prompt does not
    depend on config (e.g. max_turns), so SFT and RL prompts are identical."""
    if not question or not question.strip():
        raise ValueError("build_messages: question is empty")
    user = f"Database schema:\n{schema_text.strip()}\n\n"
    if evidence and evidence.strip():
        user += f"External knowledge: {evidence.strip()}\n\n"
    user += f"Question: {question.strip()}"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def prompt_ids(tokenizer, schema_text: str, question: str, evidence: str = "") -> list[int]:
    """Token ids of the chat prompt ending with the assistant header (generation prompt)."""
    msgs = build_messages(schema_text, question, evidence)
    text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    return list(tokenizer.encode(text, add_special_tokens=False))


_SQL_RE = re.compile(r"<sql>(.*?)</sql>", re.S)
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)
_FENCE_RE = re.compile(r"^```(?:sql|sqlite)?\s*(.*?)\s*```$", re.S | re.I)
_SQL_FENCE_RE = re.compile(r"```(?:sql|sqlite)[ \t]*\n(.*?)```", re.S | re.I)


def clean_sql(text: str) -> str | None:
    """Strips an inner <sql> wrapper, markdown fences and whitespace; None if nothing is left."""
    text = text.strip()
    m = _SQL_RE.search(text)
    if m:
        text = m.group(1).strip()
    m = _FENCE_RE.match(text)
    if m:
        text = m.group(1).strip()
    return text or None


def check_answer_format(answer_format: str) -> str:
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"rollout.answer_format={answer_format!r} must be one of {ANSWER_FORMATS}")
    return answer_format


def last_sql_fence(text: str) -> str | None:
    """Content of the last complete ```sql (or ```sqlite) block of `text`, or None."""
    blocks = _SQL_FENCE_RE.findall(text)
    return (blocks[-1].strip() or None) if blocks else None


def parse_action(text: str, answer_format: str = "tags") -> Action:
    """Parses ONE generated turn (text after the last observation). The earliest complete block wins:
    `<answer>X</answer>` -> answer; `<sql>X</sql>` -> sql, unless it sits inside an open `<answer>` (the sampler stops
    at `</sql>`, so `<answer><sql>X</sql>` arrives without `</answer>`) -> answer. Anything else is invalid, except
    with answer_format "tags_or_fence", where a turn with a ```sql block answers with the last one."""
    a, s = _ANSWER_RE.search(text), _SQL_RE.search(text)
    if a and (not s or a.start() <= s.start()):
        sql = clean_sql(a.group(1))
        return Action("answer", sql) if sql else Action("invalid", None)
    if s:
        sql = clean_sql(s.group(1))
        if sql is None:
            return Action("invalid", None)
        opened = text.rfind("<answer>", 0, s.start())
        return Action("answer" if opened >= 0 else "sql", sql)
    if check_answer_format(answer_format) == "tags_or_fence":
        sql = last_sql_fence(text)
        if sql:
            return Action("answer", sql)
    return Action("invalid", None)


def turn_end(action: Action, turn: int, max_turns: int) -> str | None:
    """How a turn that stopped ends its row: "answer", "invalid" (no complete tag) or "max_turns" (a query in the
    last turn); None when the row goes on (its query is executed and the observation appended)."""
    if action.kind in ("answer", "invalid"):
        return action.kind
    return "max_turns" if turn == max_turns - 1 else None


def extract_final_sql(assistant_text: str, answer_format: str = "tags") -> str | None:
    """The final SQL of a whole trajectory text: content of the last complete <answer> block, else (tags_or_fence)
    of the last ```sql block, else None."""
    blocks = _ANSWER_RE.findall(assistant_text)
    if blocks:
        return clean_sql(blocks[-1])
    return last_sql_fence(assistant_text) if check_answer_format(answer_format) == "tags_or_fence" else None


def format_observation(result, max_rows: int = 5, max_chars: int = 300) -> str:
    """Observation body for an executor Result: `col | col` header + up to max_rows rows, or `Error (kind): msg`."""
    if not result.ok:
        text = f"Error ({result.error_kind}): {result.error_message}".strip()
        return text if len(text) <= max_chars else text[: max_chars - 3] + "..."
    lines = [" | ".join(str(c) for c in result.columns)]
    lines += [" | ".join("NULL" if v is None else str(v) for v in row) for row in result.rows[:max_rows]]
    n = len(result.rows)
    if n > max_rows or result.truncated:
        lines.append(f"... ({n}{'+' if result.truncated else ''} rows in total)")
    elif n == 0:
        lines.append("(0 rows)")
    text = "\n".join(lines)
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def observation_text(body: str) -> str:
    """The host-appended piece for one observation (tokenized on its own; never trained on)."""
    return f"\n<observation>\n{body}\n</observation>\n"


def turn_text(thought: str, sql: str) -> str:
    return f"<think>{thought.strip()}</think>\n<sql>{sql.strip()}</sql>"


def answer_text(thought: str, sql: str) -> str:
    return f"<think>{thought.strip()}</think>\n<answer>{sql.strip()}</answer>"


def transcript_pieces(turns, answer: str | None, final_thought: str = "") -> list[tuple[str, bool]]:
    """[(text, is_agent)] of the assistant message: turns = [(thought, sql, observation_body)], then the answer."""
    pieces = []
    for thought, sql, obs in turns:
        pieces.append((turn_text(thought, sql), True))
        pieces.append((observation_text(obs), False))
    if answer is not None:
        thought = final_thought or "I have verified the query; this is the final answer."
        pieces.append((answer_text(thought, answer), True))
    return pieces


def render_transcript(
    tokenizer,
    *,
    schema_text: str,
    question: str,
    turns,
    answer: str | None,
    evidence: str = "",
    final_thought: str = "",
) -> tuple[list[int], list[float]]:
    """SFT target: (tokens, agent_mask) of prompt + assistant trajectory, ending at `</answer>` (where the sampler stops
    the final turn; no EOS). Mask is 1 on agent tokens (each turn and the answer) and 0 on the prompt and observations,
    exactly like rollout.run_rollouts."""
    tokens = prompt_ids(tokenizer, schema_text, question, evidence)
    mask = [0.0] * len(tokens)
    for text, is_agent in transcript_pieces(turns, answer, final_thought):
        ids = tokenizer.encode(text, add_special_tokens=False)
        tokens += ids
        mask += [1.0 if is_agent else 0.0] * len(ids)
    return tokens, mask
