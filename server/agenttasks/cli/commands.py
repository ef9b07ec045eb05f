"""Client commands: each one RPC (or a watch stream) against a running server."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from agenttasks.cli import render
from agenttasks.cli.client import Client, CliError, describe_rpc_error
from agenttasks.v1 import agent_service_pb2 as apb
from agenttasks.v1 import task_service_pb2 as tpb

# AIP-159: a task can be named without its agent.
ANY_AGENT = "-"
# After a server shutdown, `watch` keeps trying to resume this long.
RECONNECT_SECONDS = 60.0
RECONNECT_PAUSE_SECONDS = 1.0


def _metadata(text: str | None) -> struct_pb2.Struct | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise CliError(f"--metadata is not valid JSON: {error.msg} at position {error.pos}") from None
    if not isinstance(value, dict):
        raise CliError('--metadata must be a JSON object, like \'{"team": "search"}\'')
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def _show(args: argparse.Namespace, message: Any, text: str) -> None:
    print(render.as_json(message) if args.json else text)


def agents_create(client: Client, args: argparse.Namespace) -> int:
    request = apb.CreateAgentRequest(
        name=args.name,
        description=args.description,
        default_timeout_seconds=args.default_timeout,
        max_attempts=args.max_attempts,
        input_timeout_seconds=args.input_timeout,
        metadata=_metadata(args.metadata),
    )
    agent = client.call(client.agents.CreateAgent, request).agent
    _show(args, agent, agent.agent_id)
    return 0


def agents_get(client: Client, args: argparse.Namespace) -> int:
    agent = client.call(client.agents.GetAgent, apb.GetAgentRequest(agent_id=args.agent_id)).agent
    _show(args, agent, render.agent_text(agent))
    return 0


def _show_list(
    args: argparse.Namespace, items: list[Any], columns: tuple[str, ...], row: Callable[[Any], list[str]], empty: str
) -> None:
    """A whole list: one JSON array with --json, else a table (its widths need every row first)."""
    if args.json:
        print(render.json_document([render.to_dict(item) for item in items]))
    else:
        render.print_table(columns, [row(item) for item in items], empty)


def agents_list(client: Client, args: argparse.Namespace) -> int:
    agents: list[Any] = []
    token = ""
    while True:
        page = client.call(client.agents.ListAgents, apb.ListAgentsRequest(page_size=200, page_token=token))
        agents.extend(page.agents)
        token = page.next_page_token
        if not token:
            break
    _show_list(args, agents, render.AGENT_COLUMNS, render.agent_row, "no agents")
    return 0


def agents_status(client: Client, args: argparse.Namespace) -> int:
    rpc = {
        "pause": (client.agents.PauseAgent, apb.PauseAgentRequest),
        "resume": (client.agents.ResumeAgent, apb.ResumeAgentRequest),
        "stop": (client.agents.StopAgent, apb.StopAgentRequest),
    }[args.agents_command]
    agent = client.call(rpc[0], rpc[1](agent_id=args.agent_id)).agent
    _show(args, agent, f"{agent.agent_id} {agent.status}")
    return 0


def agents_delete(client: Client, args: argparse.Namespace) -> int:
    answer = client.call(client.agents.DeleteAgent, apb.DeleteAgentRequest(agent_id=args.agent_id))
    _show(args, answer, f"deleted {answer.agent_id} ({answer.cancelled_tasks} unfinished tasks cancelled)")
    return 0


def submit(client: Client, args: argparse.Namespace) -> int:
    request = tpb.SubmitRequest(
        agent_id=args.agent_id,
        message=args.message,
        priority=args.priority,
        timeout_override=args.timeout,
        metadata=_metadata(args.metadata),
        callback_mode="webhook" if args.webhook_url else "",
        webhook_url=args.webhook_url or "",
        request_id=args.request_id or "",
    )
    answer = client.call(client.tasks.Submit, request)
    if args.watch and args.json:
        print(render.as_json_line(answer))  # the first line of the JSON Lines that follow
    else:
        _show(args, answer, answer.task_id)
    if args.watch:
        return _watch(client, args.agent_id, answer.task_id, 0, args.json, args.until)
    return 0


# BatchSubmit takes at most this many requests (MAX_BATCH in agenttasks.core.tasks); a call also
# stays under this many bytes, half of what the server accepts in one message (8 MiB).
BATCH_LIMIT = 500
BATCH_BYTES = 4 * 1024 * 1024
# Errors after which a call may have committed all the same (the answer was lost on the way).
_OUTCOME_UNKNOWN = {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}


def _read_submissions(source: str) -> list[tuple[int, tpb.SubmitRequest]]:
    """The Submit bodies of a JSON Lines file (or stdin for "-"), each with its line number.
    Every line is parsed before anything is sent, so a malformed line queues nothing; what only
    the server checks (an empty message, a priority out of range) fails the call it is in."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise CliError(f"cannot read {source}: {error}") from None
    found: list[tuple[int, tpb.SubmitRequest]] = []
    # JSON Lines ends lines with \n only: str.splitlines() would also split inside strings, at
    # U+2028 and the like, which JSON does not escape.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise CliError(f"line {number}: not valid JSON: {error.msg} at column {error.colno}") from None
        if not isinstance(value, dict):
            raise CliError(f'line {number}: must be a JSON object like {{"message": "..."}}')
        fields = tpb.SubmitRequest.DESCRIPTOR.fields_by_name
        if unknown := sorted(set(value) - set(fields) - {f.json_name for f in fields.values()}):
            raise CliError(f"line {number}: unknown field {unknown[0]!r} (fields: {', '.join(fields)})")
        try:
            found.append((number, json_format.ParseDict(value, tpb.SubmitRequest())))
        except json_format.ParseError as error:  # a wrong type: say it on one line
            raise CliError(f"line {number}: {str(error).splitlines()[0]}") from None
    if not found:
        raise CliError(f"no tasks in {source}: expected one JSON object per line")
    return found


def _calls(submissions: list[tuple[int, tpb.SubmitRequest]]) -> list[list[tuple[int, tpb.SubmitRequest]]]:
    """The submissions in calls of at most BATCH_LIMIT requests and about BATCH_BYTES."""
    calls: list[list[tuple[int, tpb.SubmitRequest]]] = [[]]
    size = 0
    for item in submissions:
        item_size = item[1].ByteSize() + 8  # its tag and length in the batch
        if calls[-1] and (len(calls[-1]) == BATCH_LIMIT or size + item_size > BATCH_BYTES):
            calls.append([])
            size = 0
        calls[-1].append(item)
        size += item_size
    return calls


def _with_line_numbers(text: str, lines: list[int]) -> str:
    """`requests[3].priority` in a server error, as `line 12 priority` of the file."""

    def line(match: re.Match[str]) -> str:
        index = int(match[1])
        return f"line {lines[index]} " if index < len(lines) else match[0]

    return re.sub(r"requests\[(\d+)\]\.?", line, text)


def submit_batch(client: Client, args: argparse.Namespace) -> int:
    submissions = _read_submissions(args.file)
    calls = _calls(submissions)
    queued = 0
    for call in calls:
        request = tpb.BatchSubmitRequest(agent_id=args.agent_id, requests=[r for _, r in call])
        try:
            answer = client.tasks.BatchSubmit(request, metadata=client.metadata, timeout=120)
        except grpc.RpcError as error:
            # Name the file's lines, not the positions in this call; say what is queued.
            said = _with_line_numbers(describe_rpc_error(error, client.server), [number for number, _ in call])
            lines = f"lines {call[0][0]}-{call[-1][0]}" if len(call) > 1 else f"line {call[0][0]}"
            # A call that never got a connection cannot have queued anything.
            unknown = (
                isinstance(error, grpc.Call)
                and error.code() in _OUTCOME_UNKNOWN
                and "failed to connect to all addresses" not in (error.details() or "")
            )
            were = "were" if len(call) > 1 else "was"
            this = f"{lines} may have been queued all the same" if unknown else f"{lines} {were} not queued"
            before = f"the {queued} tasks before them were" if queued else "none before them was"
            raise CliError(f"{said} ({this}; {before}; lines with a request_id are safe to send again)") from None
        for response in answer.responses:
            print(render.as_json_line(response) if args.json else response.task_id)
        queued += len(call)
        if len(calls) > 1:
            print(f"queued {queued} of {len(submissions)}", file=sys.stderr, flush=True)
    return 0


def status(client: Client, args: argparse.Namespace) -> int:
    task = client.call(client.tasks.GetStatus, tpb.GetStatusRequest(agent_id=ANY_AGENT, task_id=args.task_id)).task
    _show(args, task, render.task_text(task))
    return 0


def cancel(client: Client, args: argparse.Namespace) -> int:
    task = client.call(client.tasks.Cancel, tpb.CancelRequest(agent_id=ANY_AGENT, task_id=args.task_id)).task
    _show(args, task, f"{task.task_id} {task.status}")
    return 0


def send(client: Client, args: argparse.Namespace) -> int:
    request = tpb.SendMessageRequest(
        agent_id=ANY_AGENT, task_id=args.task_id, message=args.message, request_id=args.request_id or ""
    )
    answer = client.call(client.tasks.SendMessage, request)
    _show(args, answer, f"{answer.message_id} sent; task {answer.status}")
    return 0


def tasks_list(client: Client, args: argparse.Namespace) -> int:
    tasks: list[Any] = []
    token = ""
    while len(tasks) < args.limit:
        request = tpb.ListTasksRequest(
            agent_id=args.agent_id,
            status=args.status or "",
            page_size=min(200, args.limit - len(tasks)),
            page_token=token,
        )
        page = client.call(client.tasks.ListTasks, request)
        tasks.extend(page.tasks)
        token = page.next_page_token
        if not token:
            break
    empty = f"no {args.status + ' ' if args.status else ''}tasks for agent {args.agent_id}"
    _show_list(args, tasks[: args.limit], render.TASK_COLUMNS, render.task_row, empty)
    return 0


def _watch(client: Client, agent_id: str, task_id: str, after: int, as_json: bool, until: str | None = None) -> int:
    """Follow the task. The exit status tells scripts how it went: 0 when it completed (or
    reached `until`), 1 otherwise."""
    final, retry_until = "", 0.0
    while True:
        request = tpb.WatchTaskRequest(agent_id=agent_id, task_id=task_id, after_sequence=after)
        stream = client.stream(client.tasks.WatchTask, request)
        resumable = False
        try:
            for event in stream:
                retry_until = 0.0  # connected: a later shutdown gets a fresh retry window
                if as_json:
                    print(render.as_json_line(event), flush=True)
                else:
                    render.write_event(event, sys.stdout)
                if until and event.type != "end" and event.status == until:
                    return 0
                if event.type == "end":
                    final, after = event.status, event.sequence
                    resumable = event.reason == "SERVER_SHUTDOWN"
                elif event.type != "snapshot":
                    after = event.sequence
        except CliError:
            if not retry_until or time.monotonic() > retry_until:
                raise
            time.sleep(RECONNECT_PAUSE_SECONDS)  # the server is still restarting
            continue
        finally:
            stream.close()
        if not resumable:
            return 0 if final == "completed" else 1
        # The server drained: follow the task again once it (or another replica) is back.
        retry_until = retry_until or time.monotonic() + RECONNECT_SECONDS
        time.sleep(RECONNECT_PAUSE_SECONDS)


def watch(client: Client, args: argparse.Namespace) -> int:
    return _watch(client, ANY_AGENT, args.task_id, args.after, args.json, args.until)
