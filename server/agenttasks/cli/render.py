"""How the CLI shows tasks, agents and watch events to a person (or as JSON with --json)."""

from __future__ import annotations

import json
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message

from agenttasks.v1 import agent_pb2, task_pb2, task_service_pb2


def as_json(message: Message) -> str:
    return json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True), indent=2)


def as_json_line(message: Message) -> str:
    """One message as one line of JSON, for output of many (JSON Lines)."""
    return json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True))


def _time(message: Any, field: str) -> str:
    return message.__getattribute__(field).ToDatetime().isoformat() + "Z" if message.HasField(field) else "-"


def task_text(t: task_pb2.Task) -> str:
    lines = [
        f"task      {t.task_id}",
        f"agent     {t.agent_id}",
        f"status    {t.status}" + (f" ({t.status_reason})" if t.status_reason else ""),
        f"priority  {t.priority}",
        f"created   {_time(t, 'created_at')}",
    ]
    if t.HasField("started_at"):
        lines.append(f"started   {_time(t, 'started_at')}")
    if t.HasField("completed_at"):
        lines.append(f"finished  {_time(t, 'completed_at')}")
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
            f"created   {_time(a, 'created_at')}",
        ]
    )


def agent_row(a: agent_pb2.Agent) -> str:
    return f"{a.agent_id}  {a.status:<8}  {a.name}"


def task_row(t: task_pb2.Task) -> str:
    first_line = t.message.splitlines()[0] if t.message else ""
    return f"{t.task_id}  {t.status:<14}  p{t.priority:<2}  {first_line[:60]}"


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
            out.write(f"{head}result: {t.result.text}\n")
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
            detail = f": {e.result.text}"
        elif e.HasField("error"):
            detail = f": {e.error.code} {e.error.message}"
        elif e.reason:
            detail = f" ({e.reason})"
        out.write(f"{head}{e.status}{detail}\n")
    out.flush()
