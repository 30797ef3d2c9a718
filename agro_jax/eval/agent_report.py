"""The report's "Agent behaviour" section: per evaluation (base, sft, grpo) of the held-out split (eval/*.json) and of
the Spider subset (eval/spider/*.json), the numbers agro_jax/eval/agent_eval.py puts in each report, and example
transcripts of the same questions before and after training.

    md = agent_section(workdir)   # [] when no eval report has agent stats

Table columns: EX under the strict tags and with fenced answers accepted; the share of well-formed agent turns (ended
on a stop, parse as <sql> or <answer>); turns used; exploration queries and their errors, and of the episodes with an
exploration error how many then answered with SQL that executes / that is correct; strict outcome counts.
"""

from __future__ import annotations

import json
import pathlib

from agro_jax.eval.report_format import eval_rank, md_table

OUTCOMES = ("match", "mismatch", "pred_error", "unparseable", "no_answer")
SETS = (("held-out split", "eval"), ("Spider subset", "eval/spider"))
TURN_CHARS = 600  # a transcript turn is cut to this many characters in the markdown


def _reports(folder: pathlib.Path) -> list[tuple[str, dict]]:
    out = []
    for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("agent"), dict):
            out.append((str(data.get("name") or p.stem), data))
    return sorted(out, key=lambda r: eval_rank(r[0]))


def _pct(k: int, n: int) -> str:
    return f"{100 * k / n:.1f}% ({k}/{n})" if n else "-"


def stats_rows(reports: list[tuple[str, dict]]) -> list[list]:
    rows = []
    for name, r in reports:
        a, n = r["agent"], r["num_examples"]
        fence = r.get("tags_or_fence", {})
        most = max(map(int, a["turns_hist"]), default=0)
        hist = "/".join(str(a["turns_hist"].get(str(k), 0)) for k in range(1, most + 1))
        reasons = r.get("reasons", {})
        too_long = a["finish_reasons"].get("prompt_too_long", 0)
        n_cell = f"{n} ({too_long} prompts too long)" if too_long else n
        rows.append([
            name, n_cell, _pct(r["num_correct"], n), _pct(fence.get("num_correct", 0), n),
            _pct(a["well_formed_turns"], a["turns"]), f"{a['mean_turns']:.2f} ({hist})",
            f"{a['exploration_queries']} / {a['exploration_errors']}",
            f"{a['error_episodes']}: {a['error_then_executes']} / {a['error_then_correct']}",
            " / ".join(str(reasons.get(k, 0)) for k in OUTCOMES),
        ])  # fmt: skip
    return rows


def pick_examples(reports: list[tuple[str, dict]], k: int = 2) -> list[int]:
    """Indices worth reading before vs after: first one the last evaluation gets right and the first one misses, then
    the first with an exploration error in the last evaluation, then the first one; at most k, in that order."""
    first, last = reports[0][1]["per_example"], reports[-1][1]["per_example"]
    picks = []
    gained = [i for i, (a, b) in enumerate(zip(first, last)) if b["matched"] and not a["matched"]]
    errors = [
        i for i, e in enumerate(last) if any(str(t.get("observation", "")).startswith("Error") for t in _turns(e))
    ]
    for cand in (gained[:1], errors[:1], [0], list(range(len(last)))):
        for i in cand:
            if i not in picks and len(picks) < k:
                picks.append(i)
    return picks


def _turns(row: dict) -> list[dict]:
    return (row.get("transcript") or {}).get("turns") or []


def _cut(text: str) -> str:
    text = text.strip()
    return text if len(text) <= TURN_CHARS else text[:TURN_CHARS] + f" [... {len(text) - TURN_CHARS} more chars]"


def transcript_md(name: str, row: dict) -> list[str]:
    """One example's transcript as an indented block (model output may hold ``` fences, which would end a fence)."""
    tr = row.get("transcript") or {}
    head = (f"**{name}**: {row.get('reason')} (strict), {row.get('reason_tags_or_fence', '-')} (tags-or-fence); "
            f"finish `{row.get('finish_reason_tags_or_fence', row.get('finish_reason'))}`, {tr.get('num_turns')} "
            f"turn(s), {tr.get('generated_tokens')} generated tokens")  # fmt: skip
    lines = []
    for t, turn in enumerate(_turns(row), 1):
        lines += [f"[turn {t}: {turn.get('tokens')} tokens, stop {turn.get('stop')}]", *_cut(turn["text"]).splitlines()]
        if "observation" in turn:
            lines += ["[observation]", *_cut(str(turn["observation"])).splitlines()]
    return [head, "", *["    " + x for x in lines or ["(no turns)"]], ""]


def agent_section(workdir) -> list[str]:
    workdir = pathlib.Path(workdir)
    md = []
    for label, sub in SETS:
        reports = _reports(workdir / sub)
        if not reports:
            continue
        md += [f"## Agent behaviour: {label} (`{sub}/`)", ""]
        header = ["evaluation", "n", "EX strict tags", "EX tags-or-fence", "well-formed turns", "mean turns (1/2/..)",
                  "explorations / errors", "error episodes: then executes / correct",
                  "strict " + " / ".join(OUTCOMES)]  # fmt: skip
        md += md_table(header, stats_rows(reports)) + [""]
        by_name = {name: r for name, r in reports}
        for i in pick_examples(reports):
            row0 = reports[-1][1]["per_example"][i]
            md += [f"### Example {i} ({row0.get('db_id', '')}, {row0.get('difficulty', '')}): {row0['question']}", "",
                   f"Gold: `{row0['gold']}`", ""]  # fmt: skip
            for name, r in by_name.items():
                rows = r["per_example"]
                if i < len(rows) and rows[i]["question"] == row0["question"]:  # the same question in every report
                    md += transcript_md(name, rows[i])
    return md
