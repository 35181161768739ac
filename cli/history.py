"""Text for `llmling history` and the totals of `llmling status` (plain data in, strings out; no imports of
the supervisor or of pydantic)."""

from __future__ import annotations

import time
from typing import Any

Message = dict[str, Any]


def cost_text(cost: float | None) -> str:
    """`$0.000123`, or `-` when the cost is unknown (a model not in litellm's cost map, a callback)."""
    if cost is None:
        return "-"
    return f"${cost:.6f}" if cost < 1 else f"${cost:.2f}"


def totals_text(totals: Message) -> str:
    runs = totals.get("runs") or 0
    tokens = totals.get("total_tokens") or 0
    return (
        f"{runs} run{'s' if runs != 1 else ''}, {tokens} tokens "
        f"({totals.get('prompt_tokens') or 0} prompt + {totals.get('completion_tokens') or 0} completion), "
        f"cost {cost_text(totals.get('cost'))}"
    )


def _indented(marker: str, text: str) -> list[str]:
    lines = text.splitlines() or [""]
    return [f"  {marker} {lines[0]}", *(f"    {line}" for line in lines[1:])]


def history_text(reply: Message) -> str:
    """The runs (oldest first), each with its prompt and reply, then the agent's totals."""
    out: list[str] = []
    for run in reply.get("runs", []):
        usage = run.get("usage") or {}
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.get("finished_at") or 0))
        tokens = usage.get("total_tokens")
        elapsed = run.get("elapsed")
        details = [
            f"tokens {tokens}" if tokens is not None else "tokens -",
            f"cost {cost_text(usage.get('cost'))}",
            f"{elapsed:.2f} s" if isinstance(elapsed, int | float) else "",
        ]
        if usage.get("tool_calls"):
            details.append(f"{usage['tool_calls']} tool calls")
        out.append(f"#{run.get('seq')}  {when}  {'  '.join(d for d in details if d)}")
        out.extend(_indented(">", str(run.get("prompt", ""))))
        out.extend(_indented("<", str(run.get("content", ""))))
    if reply.get("truncated"):
        out.append("(older runs left out: the reply would be too large; use a smaller --limit)")
    if not reply.get("runs"):
        out.append(f"no runs recorded for {reply.get('agent')}")
    out.append(f"{reply.get('agent')}: {totals_text(reply.get('totals') or {})} in total")
    return "\n".join(out)
