"""Plain-text views of runs for the terminal."""

from __future__ import annotations

import shlex
from datetime import datetime, timezone
from typing import Any, Sequence

from ml_runs.runs import parse_timestamp


def age(created_at: str, now: datetime) -> str:
    seconds = max(0, int((now - parse_timestamp(created_at)).total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if hours < 1:
        return f"{minutes}m"
    if days < 1:
        return f"{hours}h{minutes % 60:02d}m"
    return f"{days}d{hours % 24:02d}h"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(header)] + [["-" if v is None or v == "" else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def run_list(runs: Sequence[dict[str, Any]], now: datetime) -> str:
    if not runs:
        return "no runs"
    return table(("RUN ID", "STATE", "ATTEMPTS", "FAILURES", "AGE"), [
        (r["run_id"], _state(r), r.get("attempt_count", 0),
         f"{r.get('failures', 0)}/{r.get('spec', {}).get('max_failures', '?')}",
         age(r["created_at"], now))
        for r in runs])


def run_detail(run: dict[str, Any], now: datetime, stage: str) -> str:
    spec = run.get("spec", {})
    lines = [
        ("run", run["run_id"]),
        ("state", _state(run) + (f" ({run['end_reason']})" if run.get("end_reason") else "")),
        ("image", spec.get("image")),
        ("command", shlex.join(spec.get("command", []) + spec.get("args", [])) or "(image default)"),
        ("gpus", spec.get("gpus")),
        ("failures", f"{run.get('failures', 0)} of {spec.get('max_failures', '?')}"),
        ("max duration", f"{spec.get('max_duration_minutes', '?')} min"),
        ("created", f"{run['created_at']} ({age(run['created_at'], now)} ago)"),
        ("started", run.get("started_at")),
        ("ended", run.get("ended_at")),
        ("lease", _lease(run)),
        ("last checkpoint", run.get("last_checkpoint") or "none yet"),
    ]
    width = max(len(k) for k, _ in lines)
    text = "\n".join(f"{k.ljust(width)}  {'-' if v is None else v}" for k, v in lines)
    attempts = run.get("attempts", [])
    text += "\n\nattempts\n" + ("  none yet" if not attempts else _indent(table(
        ("#", "INSTANCE", "STARTED", "ENDED", "END REASON", "EXIT", "DETAIL"),
        [(a.get("attempt"), a.get("instance_id"), a.get("started_at"), a.get("ended_at"),
          a.get("end_reason"), a.get("exit_code"), a.get("detail")) for a in attempts])))
    return text + f"\n\nlogs: make run STAGE={stage} ARGS=\"logs {run['run_id']} --follow\""


def _state(run: dict[str, Any]) -> str:
    return run["state"] + (" (cancel requested)" if run.get("cancel_requested") and
                           run["state"] == "RUNNING" else "")


def _lease(run: dict[str, Any]) -> str | None:
    if "lease_holder" not in run:
        return None
    until = datetime.fromtimestamp(int(run.get("lease_expires_at", 0)), tz=timezone.utc)
    return f"{run['lease_holder']} until {until.strftime('%Y-%m-%dT%H:%M:%SZ')}"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
