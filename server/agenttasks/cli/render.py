"""How the CLI shows tasks, agents and watch events to a person (or as JSON with --json).

People get aligned tables under upper-case headers and times in the local zone to the minute
(seconds in the detail views); programs get `--json`: one document per command, or JSON Lines
(one compact object per line) for the streams. JSON keeps the API's snake_case names and times.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message

from agenttasks.v1 import agent_pb2, task_pb2, task_service_pb2


def to_dict(message: Message) -> dict[str, Any]:
    """A message as the API's JSON (snake_case field names, RFC 3339 UTC times)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def json_document(value: Any) -> str:
    """One JSON document (an object or an array), indented for people; `jq` reads it whole."""
    return json.dumps(value, indent=2)


def as_json(message: Message) -> str:
    return json_document(to_dict(message))


def json_line(value: Any) -> str:
    """One compact line of JSON, for output of many (JSON Lines)."""
    return json.dumps(value, separators=(",", ":"))


def as_json_line(message: Message) -> str:
    return json_line(to_dict(message))


def rfc3339(at: datetime) -> str:
    """A stored (aware) time as the API writes it: UTC, `Z`."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def local_time(at: datetime, *, seconds: bool = False) -> str:
    """`2026-12-03 10:41` in the local time zone (TZ), as a person reads a table."""
    return at.astimezone().strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def when(message: Message, field: str, *, seconds: bool = False) -> str:
    """A message's Timestamp `field` as local_time, or "-" when it is not set."""
    if not message.HasField(field):
        return "-"
    return local_time(getattr(message, field).ToDatetime(tzinfo=UTC), seconds=seconds)


def _cell(text: str) -> str:
    """Text that keeps a table's rows on one line each: control characters (a newline, a tab,
    a terminal escape in a name) become spaces, and runs of spaces one."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Rows under upper-case headers, each column as wide as its widest cell, two spaces apart,
    as `docker ps` and `gh` print them. Free text goes last: it is not padded, and a script that
    splits on whitespace still finds the columns before it."""
    cells = [[h.upper() for h in headers], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers) - 1)]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip() for row in cells
    )


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], empty: str) -> None:
    """The table on stdout; for no rows, nothing there and `empty` on stderr (as gh does), so a
    script never mistakes a header for a row and a person still learns why nothing came."""
    if rows:
        print(table(headers, rows))
    else:
        print(empty, file=sys.stderr)


def task_text(t: task_pb2.Task) -> str:
    lines = [
        f"task      {t.task_id}",
        f"agent     {t.agent_id}",
        f"status    {t.status}" + (f" ({t.status_reason})" if t.status_reason else ""),
        f"priority  {t.priority}",
        f"created   {when(t, 'created_at', seconds=True)}",
    ]
    if t.attempt > 1:
        # Only a lost lease starts another attempt; the earlier ones' output is in the events.
        lines.append(
            f"attempt   {t.attempt} (attempt {t.attempt - 1} ended when its worker was lost; "
            f"'agenttasks watch {t.task_id} --after 1' replays every attempt)"
        )
    if t.HasField("started_at"):
        lines.append(f"started   {when(t, 'started_at', seconds=True)}")
    if t.HasField("completed_at"):
        lines.append(f"finished  {when(t, 'completed_at', seconds=True)}")
    if t.HasField("progress"):
        lines.append(f"progress  {t.progress.percent:.0f}% {t.progress.text}".rstrip())
    if t.input_prompt:
        lines.append(f"waiting   {t.input_prompt}")
    if t.HasField("result"):
        lines.append(f"result    {t.result.text}")
    if t.HasField("error"):
        lines.append(f"error     {t.error.code}: {t.error.message}")
    lines.append(f"message   {t.message}")
    if t.output:
        lines.append("output:")
        lines.append(t.output.rstrip("\n"))
    return "\n".join(lines)


def agent_text(a: agent_pb2.Agent) -> str:
    return "\n".join(
        [
            f"agent     {a.agent_id}",
            f"name      {a.name}",
            f"status    {a.status}" + (f" ({a.status_message})" if a.status_message else ""),
            f"timeout   {a.default_timeout_seconds}s, max attempts {a.max_attempts}",
            f"created   {when(a, 'created_at', seconds=True)}",
        ]
    )


AGENT_COLUMNS = ("agent id", "status", "created", "name")


def agent_row(a: agent_pb2.Agent) -> list[str]:
    return [a.agent_id, a.status, when(a, "created_at"), a.name]


TASK_COLUMNS = ("task id", "status", "priority", "created", "message")


def task_row(t: task_pb2.Task) -> list[str]:
    first_line = t.message.splitlines()[0] if t.message else ""
    return [t.task_id, t.status, str(t.priority), when(t, "created_at"), first_line[:60]]


DELIVERY_COLUMNS = ("delivery id", "event", "state", "attempts", "last attempt", "next attempt", "last result")


def delivery_row(d: task_pb2.WebhookDelivery) -> list[str]:
    result = f"HTTP {d.last_status_code}" if d.last_status_code else (d.last_error or "-")
    upcoming = when(d, "next_attempt_at") if d.state == "pending" else "-"
    return [d.delivery_id, d.event_type, d.state, str(d.attempts), when(d, "last_attempt_at"), upcoming, result]


def write_event(e: task_service_pb2.WatchTaskResponse, out: TextIO) -> None:
    """One line per event: what a person watching a task wants to see as it happens."""
    head = f"[{e.sequence}] "
    if e.type == "snapshot":
        t = e.task
        extra = f" {t.progress.percent:.0f}% {t.progress.text}" if t.HasField("progress") else ""
        out.write(f"{head}{t.status}{extra}\n")
        if t.input_prompt:
            out.write(f"{head}agent asks: {t.input_prompt}\n")
        if t.HasField("result"):
            out.write(f"{head}result: {t.result.text.rstrip(chr(10))}\n")
        if t.HasField("error"):
            out.write(f"{head}error: {t.error.code} {t.error.message}\n")
    elif e.type == "progress":
        out.write(f"{head}progress {e.progress.percent:.0f}% {e.progress.text}\n")
    elif e.type == "output":
        out.write(e.output if e.output.endswith("\n") else e.output + "\n")
    elif e.type == "message":
        out.write(f"{head}message sent: {e.message.text}\n")
    elif e.type == "end":
        out.write(f"[end] {e.reason.lower().replace('_', ' ')}; task {e.status}\n")
    else:
        detail = ""
        if e.prompt:
            detail = f": agent asks: {e.prompt}"
        elif e.HasField("result"):
            detail = f": {e.result.text.rstrip(chr(10))}"  # a program's output ends with a newline
        elif e.HasField("error"):
            detail = f": {e.error.code} {e.error.message}"
        elif e.status == "queued" and e.attempt > 1:  # requeued: a new attempt will start
            detail = f" again for attempt {e.attempt} ({e.reason or 'LEASE_LOST'})"
        elif e.reason:
            detail = f" ({e.reason})"
        out.write(f"{head}{e.status}{detail}\n")
    out.flush()
