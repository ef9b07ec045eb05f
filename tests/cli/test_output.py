"""What the commands print: `--json` for programs, tables with headers for people.

Every command that prints data takes `--json` and prints one JSON document (JSON Lines for the
streams), found by walking the real parser, so a new command without `--json` fails here. All of
it runs against one real `serve` whose webhooks fail fast (a closed local port, one retry), so a
delivery is dead within moments and `webhooks retry` has something to retry.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import pytest

from tests.support import PostgresDatabases

from .support import Cli, ServerProcess, free_port, ok, one_line, serving
from .test_help import LEAVES, ids, options

pytestmark = pytest.mark.slow

# Commands that print no data, so have no --json. The groups (agents, keys, tasks, webhooks)
# only print their help and are not in LEAVES at all.
NO_JSON = {
    ("serve",),  # runs the service in the foreground; it logs, it answers nothing
    ("worker",),  # runs a worker in the foreground; it logs, it answers nothing
    ("gateway",),  # runs the front in the foreground; it logs, it answers nothing
}


class World(NamedTuple):
    """What the commands act on, made once; each command has its own where it changes things."""

    db: str
    agent: str
    agent_to_pause: str
    agent_to_resume: str
    agent_to_stop: str
    agent_to_delete: str
    task: str
    task_to_cancel: str
    finished_task: str
    dead_delivery: str
    key_to_revoke: str
    empty_tenant_key: str
    batch_file: str
    copy_target: str


OBJECT, ARRAY, LINES = "one JSON object", "one JSON array", "JSON Lines"
Invocation = tuple[str, Callable[[World], list[str]]]

# How to run each command with --json, and the shape it must print. A command missing here
# fails test_every_command_that_prints_data_prints_json: add it, or to NO_JSON with a reason.
INVOCATIONS: dict[tuple[str, ...], list[Invocation]] = {
    ("agents", "create"): [(OBJECT, lambda w: ["agents", "create", "made-for-json"])],
    ("agents", "delete"): [(OBJECT, lambda w: ["agents", "delete", w.agent_to_delete])],
    ("agents", "get"): [(OBJECT, lambda w: ["agents", "get", w.agent])],
    ("agents", "list"): [(ARRAY, lambda w: ["agents", "list"])],
    ("agents", "pause"): [(OBJECT, lambda w: ["agents", "pause", w.agent_to_pause])],
    ("agents", "resume"): [(OBJECT, lambda w: ["agents", "resume", w.agent_to_resume])],
    ("agents", "stop"): [(OBJECT, lambda w: ["agents", "stop", w.agent_to_stop])],
    ("cancel",): [(OBJECT, lambda w: ["cancel", w.task_to_cancel])],
    ("keys", "create"): [(OBJECT, lambda w: ["keys", "create", "--tenant", "json", "--db", w.db])],
    ("keys", "list"): [(ARRAY, lambda w: ["keys", "list", "--tenant", "json", "--db", w.db])],
    ("keys", "revoke"): [(OBJECT, lambda w: ["keys", "revoke", w.key_to_revoke, "--db", w.db])],
    ("send",): [(OBJECT, lambda w: ["send", w.task, "more detail"])],
    ("store", "copy"): [(OBJECT, lambda w: ["store", "copy", w.db, w.copy_target])],
    ("status",): [(OBJECT, lambda w: ["status", w.task])],
    ("submit",): [
        (OBJECT, lambda w: ["submit", w.agent, "a task"]),
        (LINES, lambda w: ["submit", w.agent, "watched", "--watch", "--until", "queued"]),
    ],
    ("submit-batch",): [(LINES, lambda w: ["submit-batch", w.agent, w.batch_file])],
    ("tasks", "list"): [(ARRAY, lambda w: ["tasks", "list", w.agent])],
    ("token",): [(OBJECT, lambda w: ["token", "--tenant", "json", "--db", w.db])],
    ("watch",): [(LINES, lambda w: ["watch", w.finished_task])],
    ("webhooks", "list"): [(ARRAY, lambda w: ["webhooks", "list", w.finished_task])],
    ("webhooks", "retry"): [(OBJECT, lambda w: ["webhooks", "retry", w.dead_delivery])],
    ("webhooks", "rotate-secret"): [(OBJECT, lambda w: ["webhooks", "rotate-secret"])],
    ("webhooks", "secret"): [(OBJECT, lambda w: ["webhooks", "secret"])],
}
# `watch` of a task that did not complete exits 1 (by design: scripts read how it went).
EXIT_CODES = {("watch",): 1}
PRINTS_DATA = sorted(set(LEAVES) - NO_JSON)


@pytest.fixture(scope="module")
def server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """This module's `serve`: webhooks may reach 127.0.0.1 and give up after a second attempt."""
    db = tmp_path_factory.mktemp("serve") / "agenttasks.db"
    with serving(db, "--webhook-allow", "127.0.0.0/8", env={"AGENTTASKS_WEBHOOK_RETRY_SCHEDULE": "[0]"}) as process:
        yield process


def new_agent(cli: Cli, name: str) -> str:
    return one_line(ok(cli("agents", "create", name)))


def new_task(cli: Cli, agent: str, *extra: str) -> str:
    return one_line(ok(cli("submit", agent, "do it", *extra)))


@pytest.fixture(scope="module")
def world(
    cli: Cli,
    server_process: ServerProcess,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_databases: PostgresDatabases,
) -> Iterator[World]:
    db = str(server_process.db)
    agent = new_agent(cli, "json")
    hooked = new_task(cli, agent, "--webhook-url", f"http://127.0.0.1:{free_port()}/hook")
    ok(cli("cancel", hooked))
    resumable = new_agent(cli, "to-resume")
    ok(cli("agents", "pause", resumable))
    key = one_line(ok(cli("keys", "create", "--tenant", "json", "--db", db)))
    batch = tmp_path_factory.mktemp("batch") / "tasks.jsonl"
    batch.write_text('{"message": "one"}\n{"message": "two", "priority": 9}\n', encoding="utf-8")
    # The delivery of `hooked`'s cancellation fails twice (nothing listens) and is then dead.
    deadline = time.monotonic() + 30
    while True:
        deliveries = json.loads(ok(cli("status", hooked, "--json"))).get("webhook_deliveries", [])
        if deliveries and deliveries[0]["state"] == "dead":
            break
        assert time.monotonic() < deadline, f"the delivery is not dead yet: {deliveries}"
        time.sleep(0.2)
    with postgres_databases.database(migrated=False) as copy_target:
        yield World(
            db=db,
            agent=agent,
            agent_to_pause=new_agent(cli, "to-pause"),
            agent_to_resume=resumable,
            agent_to_stop=new_agent(cli, "to-stop"),
            agent_to_delete=new_agent(cli, "to-delete"),
            task=new_task(cli, agent),
            task_to_cancel=new_task(cli, agent),
            finished_task=hooked,
            dead_delivery=deliveries[0]["delivery_id"],
            key_to_revoke=key,
            empty_tenant_key=one_line(ok(cli("keys", "create", "--tenant", "nothing-here", "--db", db))),
            batch_file=str(batch),
            copy_target=copy_target,
        )


# --- --json ---


def test_every_command_that_prints_data_takes_json() -> None:
    missing = [ids(path) for path in PRINTS_DATA if "--json" not in options(LEAVES[path])]
    assert not missing, f"no --json on: {missing} (or add them to NO_JSON, saying why)"


def test_the_lists_here_name_real_commands() -> None:
    assert set(LEAVES) >= NO_JSON
    assert set(INVOCATIONS) <= set(LEAVES), set(INVOCATIONS) - set(LEAVES)


def check_shape(kind: str, out: str) -> None:
    if kind == LINES:
        lines = out.splitlines()
        assert lines, "no lines"
        for line in lines:
            assert isinstance(json.loads(line), dict), line  # one whole object on each line
        return
    document = json.loads(out)  # one document, not several one after another
    if kind == ARRAY:
        assert isinstance(document, list) and document, document
        assert all(isinstance(item, dict) for item in document), document
    else:
        assert isinstance(document, dict) and document, document
    for item in document if kind == ARRAY else [document]:
        assert all(key == key.lower() for key in item), f"not the API's snake_case: {sorted(item)}"


@pytest.mark.parametrize("path", PRINTS_DATA, ids=ids)
def test_every_command_that_prints_data_prints_json(cli: Cli, world: World, path: tuple[str, ...]) -> None:
    assert path in INVOCATIONS, f"add '{ids(path)}' to INVOCATIONS (how to run it with --json)"
    for kind, argv in INVOCATIONS[path]:
        command = [*argv(world), "--json"]
        result = cli(*command)
        assert result.returncode == EXIT_CODES.get(path, 0), (command, result.stdout, result.stderr)
        check_shape(kind, result.stdout)


def test_json_help_says_json_lines_for_the_streams() -> None:
    for path in [("watch",), ("submit",), ("submit-batch",)]:
        help_text = next(a.help for a in LEAVES[path]._actions if "--json" in a.option_strings)
        assert help_text and "JSON Lines" in help_text, (path, help_text)


def test_json_answers_hold_what_they_say(cli: Cli, world: World) -> None:
    agents = json.loads(ok(cli("agents", "list", "--json")))
    assert world.agent in [a["agent_id"] for a in agents]
    tasks = json.loads(ok(cli("tasks", "list", world.agent, "--json", "--status", "cancelled")))
    assert {t["status"] for t in tasks} == {"cancelled"} and world.finished_task in [t["task_id"] for t in tasks]
    assert json.loads(ok(cli("tasks", "list", world.agent, "--json", "--status", "running"))) == []

    made = json.loads(ok(cli("keys", "create", "--tenant", "json-2", "--role", "worker", "--db", world.db, "--json")))
    assert made["api_key"].startswith(f"atk_{made['key_id']}_")
    assert (made["tenant"], made["role"]) == ("json-2", "worker")
    (listed,) = json.loads(ok(cli("keys", "list", "--tenant", "json-2", "--db", world.db, "--json")))
    assert listed["key_id"] == made["key_id"] and listed["role"] == "worker"
    assert made["api_key"].split("_", 2)[2] not in json.dumps(listed)  # never the secret
    assert json.loads(ok(cli("keys", "list", "--tenant", "nobody", "--db", world.db, "--json"))) == []
    revoked = json.loads(ok(cli("keys", "revoke", made["key_id"], "--db", world.db, "--json")))
    assert revoked == {"key_id": made["key_id"], "revoked": True}

    token = json.loads(ok(cli("token", "--tenant", "json", "--ttl", "15m", "--db", world.db, "--json")))
    claims = json.loads(base64.urlsafe_b64decode(token["token"].split(".")[1] + "=="))
    assert datetime.fromisoformat(token["expires_at"]) == datetime.fromtimestamp(claims["exp"], UTC)
    assert claims["exp"] - claims["iat"] == 15 * 60

    (delivery,) = json.loads(ok(cli("webhooks", "list", world.finished_task, "--json")))
    assert delivery["event_type"] == "task.cancelled"
    assert json.loads(ok(cli("webhooks", "list", world.task, "--json"))) == []


def test_streams_print_one_compact_object_per_line(cli: Cli, world: World) -> None:
    lines = ok(cli("submit", world.agent, "follow", "--watch", "--until", "queued", "--json")).splitlines()
    answer, snapshot = (json.loads(line) for line in lines)
    assert answer["status"] == "queued" and "poll_url" in answer  # the Submit answer comes first
    assert snapshot["type"] == "snapshot" and snapshot["task"]["task_id"] == answer["task_id"]

    watched = cli("watch", world.finished_task, "--json")
    events = [json.loads(line) for line in watched.stdout.splitlines()]
    assert [e["type"] for e in events] == ["snapshot", "end"], watched.stdout
    assert events[-1]["status"] == "cancelled"


# --- tables ---


def table(text: str, columns: list[str]) -> list[dict[str, str]]:
    """The rows under a header of exactly `columns`, cut where each header name starts."""
    header, *rows = text.splitlines()
    assert re.split(r" {2,}", header) == columns, header
    starts = [header.index(name) for name in columns]
    ends = [*starts[1:], None]
    found = []
    for row in rows:
        # Two spaces before every column (a short row may end early: its last cells are empty).
        assert all(row[start - 2 : start].strip() == "" for start in starts[1:]), f"not aligned:\n{text}"
        found.append({name: row[a:b].strip() for name, a, b in zip(columns, starts, ends, strict=True)})
    return found


SHORT_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d$")


def local(rfc3339: str, offset: timedelta) -> str:
    """An API time (RFC 3339, UTC) as the tables show it in a zone `offset` from UTC."""
    at = datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    return (at + offset).strftime("%Y-%m-%d %H:%M")


# A POSIX TZ value (no tz database needed): local time is UTC+05:30 in the child process.
INDIA = ({"TZ": "IST-05:30"}, timedelta(hours=5, minutes=30))
IN_UTC = ({"TZ": "UTC"}, timedelta(0))


@pytest.mark.parametrize(("env", "offset"), [IN_UTC, INDIA], ids=["UTC", "UTC+05:30"])
def test_tasks_list_is_a_table_with_local_times(cli: Cli, env: dict[str, str], offset: timedelta) -> None:
    agent = new_agent(cli, "table")
    queued = new_task(cli, agent, "--priority", "8")
    cancelled = new_task(cli, agent)
    ok(cli("cancel", cancelled))
    rows = table(ok(cli("tasks", "list", agent, env=env)), ["TASK ID", "STATUS", "PRIORITY", "CREATED", "MESSAGE"])
    assert [(r["TASK ID"], r["STATUS"], r["PRIORITY"]) for r in rows] == [
        (cancelled, "cancelled", "5"),
        (queued, "queued", "8"),
    ]
    created = {t["task_id"]: t["created_at"] for t in json.loads(ok(cli("tasks", "list", agent, "--json")))}
    for row in rows:
        assert SHORT_TIME.match(row["CREATED"]), row
        assert row["CREATED"] == local(created[row["TASK ID"]], offset), row
        assert row["MESSAGE"] == "do it"


def test_agents_list_is_a_table(cli: Cli) -> None:
    agent = new_agent(cli, "a name with spaces")
    rows = table(ok(cli("agents", "list", env=IN_UTC[0])), ["AGENT ID", "STATUS", "CREATED", "NAME"])
    (row,) = [r for r in rows if r["AGENT ID"] == agent]
    assert (row["STATUS"], row["NAME"]) == ("active", "a name with spaces")
    created = json.loads(ok(cli("agents", "get", agent, "--json")))["created_at"]
    assert row["CREATED"] == local(created, timedelta(0))


def test_keys_list_is_a_table(cli: Cli, world: World) -> None:
    db = ["--db", world.db]
    worker = one_line(ok(cli("keys", "create", "--tenant", "tabled", "--role", "worker", "--agent", world.agent, *db)))
    admin = one_line(ok(cli("keys", "create", "--tenant", "tabled", "--role", "admin", "--description", "ops", *db)))
    ok(cli("keys", "revoke", admin, *db))
    columns = ["KEY ID", "ROLE", "STATUS", "AGENT", "CREATED", "DESCRIPTION"]
    rows = {r["KEY ID"]: r for r in table(ok(cli("keys", "list", "--tenant", "tabled", *db, env=IN_UTC[0])), columns)}
    assert set(rows) == {worker.split("_")[1], admin.split("_")[1]}
    row = rows[worker.split("_")[1]]
    assert (row["ROLE"], row["STATUS"], row["AGENT"], row["DESCRIPTION"]) == ("worker", "active", world.agent, "")
    row = rows[admin.split("_")[1]]
    assert (row["ROLE"], row["STATUS"], row["AGENT"], row["DESCRIPTION"]) == ("admin", "revoked", "-", "ops")
    listed = json.loads(ok(cli("keys", "list", "--tenant", "tabled", *db, "--json")))
    for key in listed:
        assert rows[key["key_id"]]["CREATED"] == local(key["created_at"], timedelta(0))


def test_webhooks_list_is_a_table(cli: Cli, world: World) -> None:
    columns = ["DELIVERY ID", "EVENT", "STATE", "ATTEMPTS", "LAST ATTEMPT", "NEXT ATTEMPT", "LAST RESULT"]
    rows = table(ok(cli("webhooks", "list", world.finished_task, env=IN_UTC[0])), columns)
    (row,) = rows
    assert (row["DELIVERY ID"], row["EVENT"]) == (world.dead_delivery, "task.cancelled")
    assert SHORT_TIME.match(row["LAST ATTEMPT"]), row
    assert row["LAST RESULT"], row


@pytest.mark.parametrize(
    ("command", "note"),
    [
        (["tasks", "list", "AGENT", "--status", "running"], "no running tasks"),
        (["webhooks", "list", "TASK"], "no webhook deliveries"),
        (["keys", "list", "--tenant", "nobody", "--db", "DB"], "no API keys"),
        (["agents", "list", "--api-key", "KEY"], "no agents"),
    ],
)
def test_an_empty_list_prints_nothing_and_says_so_on_stderr(
    cli: Cli, world: World, command: list[str], note: str
) -> None:
    """As gh does: nothing on stdout for a script to mistake for a row, a note for the person."""
    given = {"AGENT": world.agent, "TASK": world.task, "DB": world.db, "KEY": world.empty_tenant_key}
    args = [given.get(a, a) for a in command]
    result = cli(*args)
    assert ok(result) == ""
    assert one_line(result.stderr).startswith(note), result.stderr
