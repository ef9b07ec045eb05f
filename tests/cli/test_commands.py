"""The client and admin commands against one real `agenttasks serve` process (shared by this module).

Each test makes its own agents and tasks, so they do not depend on one another's state.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from pathlib import Path

import pytest

from .support import UUID, Cli, Server, Spawned, failed, free_port, ok, one_line, run_cli, usage_error

pytestmark = pytest.mark.slow

API_KEY = re.compile(r"^atk_([0-9a-f]{16})_([A-Za-z0-9_-]{20,})$")


def new_agent(cli: Cli, name: str = "agent", *extra: str) -> str:
    return one_line(ok(cli("agents", "create", name, *extra)))


def new_task(cli: Cli, agent: str, message: str = "do it", *extra: str) -> str:
    return one_line(ok(cli("submit", agent, message, *extra)))


def field(text: str, name: str) -> str:
    """The value of `name` in the aligned `name   value` lines of `status` / `agents get`."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == name:
            return value.strip()
    raise AssertionError(f"no {name!r} line in:\n{text}")


# --- agents ---


def test_agents_create_prints_only_the_new_id(cli: Cli) -> None:
    result = cli("agents", "create", "summariser", "--description", "summarises documents")
    assert UUID.match(ok(result).strip()), result.stdout
    assert result.stdout == result.stdout.strip() + "\n", "the id alone, on one line"


def test_agents_get_list_pause_resume_stop(cli: Cli) -> None:
    agent = new_agent(cli, "lifecycle", "--max-attempts", "2", "--default-timeout", "60")
    shown = ok(cli("agents", "get", agent))
    assert field(shown, "agent") == agent
    assert field(shown, "name") == "lifecycle"
    assert field(shown, "status") == "active"
    assert "60s, max attempts 2" in shown

    header, *rows = ok(cli("agents", "list")).splitlines()
    assert header.split() == ["AGENT", "ID", "STATUS", "CREATED", "NAME"], header
    assert any(row.startswith(agent) and row.endswith("lifecycle") for row in rows), rows

    assert one_line(ok(cli("agents", "pause", agent))) == f"{agent} paused"
    assert field(ok(cli("agents", "get", agent)), "status") == "paused"
    assert one_line(ok(cli("agents", "resume", agent))) == f"{agent} active"
    assert one_line(ok(cli("agents", "stop", agent))) == f"{agent} stopped"
    assert field(ok(cli("agents", "get", agent)), "status") == "stopped"
    assert json.loads(ok(cli("agents", "get", agent, "--json")))["status"] == "stopped"


def test_agents_delete_cancels_unfinished_tasks(cli: Cli) -> None:
    agent = new_agent(cli, "short-lived")
    task = new_task(cli, agent)
    assert one_line(ok(cli("agents", "delete", agent))) == f"deleted {agent} (1 unfinished tasks cancelled)"
    assert "AGENT_NOT_FOUND" in failed(cli("agents", "get", agent))
    assert "TASK_NOT_FOUND" in failed(cli("status", task)), "the agent's tasks went with it"


def test_an_unknown_agent_is_agent_not_found(cli: Cli) -> None:
    missing = str(uuid.uuid4())
    for command in (["agents", "get", missing], ["agents", "pause", missing], ["submit", missing, "hi"]):
        assert "AGENT_NOT_FOUND" in failed(cli(*command)), command


# --- tasks ---


def test_the_task_flow_submit_status_send_list_cancel_watch(cli: Cli) -> None:
    agent = new_agent(cli, "flow")
    submitted = cli("submit", agent, "Summarise the Q3 report", "--priority", "8", "--metadata", '{"team": "finance"}')
    task = one_line(ok(submitted))
    assert UUID.match(task), submitted.stdout
    assert submitted.stderr == ""

    status = ok(cli("status", task))
    assert field(status, "task") == task
    assert field(status, "agent") == agent
    assert field(status, "status") == "queued"
    assert field(status, "priority") == "8"
    assert field(status, "message") == "Summarise the Q3 report"
    as_json = json.loads(ok(cli("status", task, "--json")))
    assert as_json["metadata"] == {"team": "finance"}
    assert as_json["status"] == "queued"

    sent = one_line(ok(cli("send", task, "Focus on revenue, please")))
    assert sent.endswith("sent; task queued"), sent

    header, *rows = ok(cli("tasks", "list", agent)).splitlines()
    assert header.startswith("TASK ID"), header
    assert len(rows) == 1, rows
    assert rows[0].startswith(task), rows
    assert "queued" in rows[0]
    assert "Summarise the Q3 report" in rows[0]
    assert ok(cli("tasks", "list", agent, "--status", "cancelled")) == ""

    assert one_line(ok(cli("cancel", task))) == f"{task} cancelled"
    assert one_line(ok(cli("cancel", task))) == f"{task} cancelled", "cancelling twice is not an error"
    assert field(ok(cli("status", task)), "status").startswith("cancelled")
    assert ok(cli("tasks", "list", agent, "--status", "cancelled")).splitlines()[1].startswith(task)

    watched = cli("watch", task)
    assert watched.returncode == 1, "watch exits 0 only for a completed task"
    lines = watched.stdout.splitlines()
    assert re.match(r"^\[\d+\] cancelled$", lines[0]), lines
    assert lines[-1] == "[end] task finished; task cancelled", lines
    assert watched.stderr == ""

    assert "TASK_ALREADY_FINISHED" in failed(cli("send", task, "too late"))


def test_submit_to_a_paused_agent_is_refused(cli: Cli) -> None:
    agent = new_agent(cli, "paused")
    ok(cli("agents", "pause", agent))
    result = cli("submit", agent, "more work")
    assert "AGENT_UNAVAILABLE" in failed(result)
    assert result.stdout == ""
    ok(cli("agents", "resume", agent))
    new_task(cli, agent, "now it is accepted")


def test_submit_json_has_snake_case_keys(cli: Cli) -> None:
    agent = new_agent(cli, "json")
    answer = json.loads(ok(cli("submit", agent, "hello", "--json")))
    assert {"task_id", "status", "poll_url"} <= answer.keys(), answer
    assert not any(any(c.isupper() for c in key) for key in answer), answer
    assert UUID.match(answer["task_id"])
    assert answer["status"] == "queued"
    assert answer["task_id"] in answer["poll_url"]
    assert answer["agent_id"] == agent


def test_submit_with_a_request_id_is_idempotent(cli: Cli) -> None:
    agent = new_agent(cli, "idempotent")
    first = new_task(cli, agent, "once", "--request-id", "req-1")
    assert new_task(cli, agent, "once", "--request-id", "req-1") == first
    assert "IDEMPOTENCY_KEY_REUSED" in failed(cli("submit", agent, "other", "--request-id", "req-1"))


def lines_file(tmp_path: Path, rows: list[object], name: str = "tasks.jsonl") -> str:
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def test_submit_batch_queues_every_line_in_order_in_calls_of_500(cli: Cli, tmp_path: Path) -> None:
    agent = new_agent(cli, "batch")
    rows: list[object] = [{"message": f"task {i}", "priority": 1 + i % 10} for i in range(1203)]
    result = cli("submit-batch", agent, lines_file(tmp_path, rows))
    ids = ok(result).split()
    assert len(ids) == len(set(ids)) == 1203 and all(UUID.match(i) for i in ids)
    assert "queued 500 of 1203" in result.stderr and "queued 1203 of 1203" in result.stderr  # progress
    shown = ok(cli("status", ids[1202]))
    assert (field(shown, "message"), field(shown, "priority")) == ("task 1202", "3")


def test_submit_batch_json_lines_and_idempotent_retry(cli: Cli, tmp_path: Path) -> None:
    agent = new_agent(cli, "batch-json")
    file = lines_file(tmp_path, [{"message": "a", "request_id": "r-a"}, {"message": "b", "request_id": "r-b"}])
    answers = [json.loads(line) for line in ok(cli("submit-batch", agent, file, "--json")).splitlines()]
    assert [a["status"] for a in answers] == ["queued", "queued"]
    again = [json.loads(line) for line in ok(cli("submit-batch", agent, file, "--json")).splitlines()]
    assert [a["task_id"] for a in again] == [a["task_id"] for a in answers]  # the keys made the retry safe


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ('{"message": "ok"}\n{message: oops}\n', "line 2: not valid JSON"),
        ('{"message": "ok"}\n\n["a list"]\n', "line 3: must be a JSON object"),
        ('{"message": "ok", "colour": "red"}\n', "line 1: unknown field 'colour' (fields: agent_id, message,"),
        ('{"message": "ok", "priority": "high"}\n', "line 1: Failed to parse priority field"),
        ("\n\n", "no tasks in"),
    ],
)
def test_submit_batch_checks_every_line_before_sending(cli: Cli, tmp_path: Path, content: str, says: str) -> None:
    agent = new_agent(cli, "batch-bad")
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    assert says in failed(cli("submit-batch", agent, str(path)))
    assert ok(cli("tasks", "list", agent)).strip() == ""  # nothing was queued


def test_submit_batch_names_the_line_the_server_refused(cli: Cli, tmp_path: Path) -> None:
    agent = new_agent(cli, "batch-refused")
    rows: list[object] = [{"message": f"task {i}"} for i in range(600)]
    rows[550] = {"message": "too high", "priority": 11}
    result = cli("submit-batch", agent, lines_file(tmp_path, rows))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stdout.split()) == 500  # the first call's ids, printed as it was queued
    said = result.stderr.splitlines()[-1]  # after the progress line
    assert "line 551 priority" in said, said
    assert "lines 501-600 were not queued; the 500 tasks before them were" in said, said


def test_submit_batch_reads_json_lines_as_json_does_and_splits_big_files_by_size(cli: Cli, tmp_path: Path) -> None:
    agent = new_agent(cli, "batch-big")
    path = tmp_path / "big.jsonl"
    big = "x" * 200_000
    lines = [json.dumps({"message": f"a\u2028b {i} {big}"}, ensure_ascii=False) for i in range(30)]
    path.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")  # a BOM, U+2028 in strings
    result = cli("submit-batch", agent, str(path))
    ids = ok(result).split()
    assert len(ids) == 30
    assert "queued 30 of 30" in result.stderr  # 6 MB went in more than one call
    assert result.stderr.count("queued") >= 2
    assert json.loads(ok(cli("status", ids[0], "--json")))["message"].startswith("a\u2028b 0 x")


@pytest.mark.parametrize(
    ("command", "metadata", "says"),
    [
        ("submit", "{team: finance}", "not valid JSON"),
        ("submit", "[1, 2]", "must be a JSON object"),
        ("submit", '"finance"', "must be a JSON object"),
        ("agents create", "", "not valid JSON"),
        ("agents create", "42", "must be a JSON object"),
    ],
)
def test_bad_metadata_is_one_clear_line(cli: Cli, command: str, metadata: str, says: str) -> None:
    args = ["submit", str(uuid.uuid4()), "hi"] if command == "submit" else ["agents", "create", "name"]
    line = failed(cli(*args, "--metadata", metadata))
    assert "--metadata" in line, line
    assert says in line, line


@pytest.mark.parametrize("priority", ["11", "0", "high"])
def test_priority_out_of_range_is_a_usage_error(cli: Cli, priority: str) -> None:
    line = usage_error(cli("submit", str(uuid.uuid4()), "hi", "--priority", priority))
    assert "--priority" in line, line


def test_unknown_task_is_task_not_found(cli: Cli) -> None:
    missing = str(uuid.uuid4())
    for command in (["status", missing], ["cancel", missing], ["send", missing, "hi"], ["watch", missing]):
        result = cli(*command)
        line = failed(result)
        assert "TASK_NOT_FOUND" in line, (command, line)
        assert missing in line, (command, line)
        assert result.stdout == ""


def test_a_malformed_task_id_is_invalid_argument_naming_task_id(cli: Cli) -> None:
    for command in (["status", "nope"], ["cancel", "nope"], ["send", "nope", "hi"], ["watch", "nope"]):
        line = failed(cli(*command))
        assert "INVALID_ARGUMENT" in line, (command, line)
        assert "task_id" in line, (command, line)


def test_missing_credentials_are_one_clear_line(cli: Cli) -> None:
    result = cli("agents", "list", env={"AGENTTASKS_API_KEY": None})
    line = failed(result)
    assert "no credentials" in line
    assert "--api-key" in line and "AGENTTASKS_API_KEY" in line


def test_a_wrong_key_is_unauthenticated(cli: Cli) -> None:
    assert "UNAUTHENTICATED" in failed(cli("agents", "list", api_key="atk_0123456789abcdef_" + "x" * 43))
    assert "UNAUTHENTICATED" in failed(cli("agents", "list", api_key="not-a-key"))


def test_an_unreachable_server_is_one_clear_line(cli: Cli) -> None:
    closed = f"127.0.0.1:{free_port()}"
    for command in (["agents", "list"], ["status", str(uuid.uuid4())], ["watch", str(uuid.uuid4())]):
        line = failed(cli(*command, env={"AGENTTASKS_SERVER": closed}))
        assert (
            line
            == f"agenttasks: cannot reach agenttasks at {closed} (connection refused): is 'agenttasks serve' running?"
        ), line


def test_flags_work_without_the_environment(server: Server) -> None:
    env: dict[str, str | None] = {"AGENTTASKS_SERVER": None, "AGENTTASKS_API_KEY": None}
    flags = ["--server", server.address, "--api-key", server.admin_key]
    agent = one_line(ok(run_cli("agents", "create", "by-flags", *flags, env=env)))
    assert agent in ok(run_cli("agents", "list", *flags, env=env))
    # Flags win over the environment.
    env = {"AGENTTASKS_SERVER": f"127.0.0.1:{free_port()}", "AGENTTASKS_API_KEY": "atk_wrong"}
    assert agent in ok(run_cli("agents", "get", agent, *flags, env=env))


# --- live watching ---


@pytest.mark.timeout(120)
def test_watch_follows_a_task_live_until_it_ends(cli: Cli, server: Server) -> None:
    agent = new_agent(cli, "watched")
    task = new_task(cli, agent)
    env = {"AGENTTASKS_SERVER": server.address, "AGENTTASKS_API_KEY": server.admin_key}
    watcher = Spawned("watch", task, env=env)
    try:
        watcher.wait_for_stdout(re.compile(r"^\[\d+\] queued$"))
        ok(cli("send", task, "a live message"))
        watcher.wait_for_stdout(re.compile(r"^\[\d+\] message sent: a live message$"))
        ok(cli("cancel", task))
        assert watcher.wait() == 1
    finally:
        watcher.kill()
    assert watcher.stdout.splitlines()[-1] == "[end] task finished; task cancelled", watcher.stdout
    assert watcher.stderr == ""


@pytest.mark.timeout(120)
def test_submit_watch_prints_the_id_then_follows(cli: Cli, server: Server) -> None:
    agent = new_agent(cli, "submit-watch")
    env = {"AGENTTASKS_SERVER": server.address, "AGENTTASKS_API_KEY": server.admin_key}
    watcher = Spawned("submit", agent, "follow me", "--watch", env=env)
    try:
        task = watcher.wait_for_stdout(UUID).group(0)
        watcher.wait_for_stdout(re.compile(r"^\[\d+\] queued$"))
        ok(cli("cancel", task))
        assert watcher.wait() == 1
    finally:
        watcher.kill()
    lines = watcher.stdout.splitlines()
    assert lines[0] == task
    assert lines[-1] == "[end] task finished; task cancelled", lines


@pytest.mark.timeout(120)
def test_a_requeued_task_reads_as_its_next_attempt(cli: Cli, server: Server) -> None:
    agent = new_agent(cli, "requeued")
    task = new_task(cli, agent, "count them")
    worker_key = ok(cli("keys", "create", "--tenant", "default", "--role", "worker", "--db", str(server.db_path)))
    # A program that talks until its worker is gone (then its next write fails and it ends).
    talker = "import time\nwhile True:\n    print('sheep', flush=True)\n    time.sleep(0.2)"
    env = {"AGENTTASKS_SERVER": server.address, "AGENTTASKS_API_KEY": worker_key.strip()}
    worker = Spawned("worker", agent, "--", "python3", "-c", talker, env=env)
    try:
        deadline = time.monotonic() + 60
        while "sheep" not in (shown := ok(cli("status", task))):
            assert time.monotonic() < deadline, shown
            time.sleep(0.1)
        assert field(shown, "started")
    finally:
        worker.kill()  # SIGKILL: the worker vanishes, its lease is lost, the task is requeued
    deadline = time.monotonic() + 60
    while field(shown := ok(cli("status", task)), "status") != "queued (LEASE_LOST)":
        assert time.monotonic() < deadline, shown
        time.sleep(0.1)
    # Attempt 2 has not started and said nothing; attempt 1's start and output are not its own.
    assert field(shown, "attempt").startswith("2 (attempt 1 ended when its worker was lost;"), shown
    assert not [line for line in shown.splitlines() if line.startswith(("started", "output:"))], shown
    assert "sheep" not in shown, shown
    # What attempt 1 said is kept, in the events.
    ok(cli("cancel", task))
    replay = cli("watch", task, "--after", "1").stdout
    assert "sheep" in replay and re.search(r"^\[\d+\] queued again for attempt 2 \(LEASE_LOST\)$", replay, re.M), replay


# --- keys and tokens (local commands on the database file) ---


def test_keys_create_prints_the_key_alone(cli: Cli, server: Server) -> None:
    result = cli("keys", "create", "--tenant", "acme", "--db", str(server.db_path))
    key = one_line(ok(result))
    assert result.stdout == key + "\n"
    assert API_KEY.match(key), key
    # The new key works against the server, in its own tenant.
    agent = new_agent(cli, "acme-agent")
    assert agent not in ok(cli("agents", "list", api_key=key))
    acme_agent = one_line(ok(cli("agents", "create", "mine", api_key=key)))
    assert acme_agent in ok(cli("agents", "list", api_key=key))
    assert acme_agent not in ok(cli("agents", "list"))


def test_keys_create_with_a_role_and_keys_list_without_secrets(cli: Cli, server: Server) -> None:
    db = ["--db", str(server.db_path)]
    worker = one_line(ok(cli("keys", "create", "--tenant", "roles", "--role", "worker", "--description", "w1", *db)))
    admin = one_line(ok(cli("keys", "create", "--tenant", "roles", "--role", "admin", *db)))
    listed = ok(cli("keys", "list", "--tenant", "roles", *db))
    for key, role in ((worker, "worker"), (admin, "admin")):
        match = API_KEY.match(key)
        assert match, key
        key_id, secret = match.groups()
        rows = [row for row in listed.splitlines() if row.startswith(key_id)]
        assert len(rows) == 1, listed
        assert role in rows[0].split()
        assert "active" in rows[0].split()
        assert secret not in listed
    assert "w1" in listed
    # A worker serves tasks; it may not manage agents.
    assert "PERMISSION_DENIED" in failed(cli("agents", "list", api_key=worker))
    assert ok(cli("keys", "list", "--tenant", "nobody", *db)) == ""


def test_a_worker_key_or_token_can_be_scoped_to_one_agent(cli: Cli, server: Server) -> None:
    db = ["--db", str(server.db_path)]
    agent = str(uuid.uuid4())
    key = one_line(ok(cli("keys", "create", "--tenant", "scoped", "--role", "worker", "--agent", agent, *db)))
    key_id = API_KEY.match(key).group(1)  # type: ignore[union-attr]
    row = next(r for r in ok(cli("keys", "list", "--tenant", "scoped", *db)).splitlines() if r.startswith(key_id))
    assert agent in row.split()
    token = one_line(ok(cli("token", "--tenant", "scoped", "--role", "worker", "--agent", agent, *db)))
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["agent_id"] == agent
    assert "--role worker" in failed(cli("keys", "create", "--tenant", "scoped", "--agent", agent, *db))
    assert "--role worker" in failed(cli("token", "--tenant", "scoped", "--role", "admin", "--agent", agent, *db))
    assert "must be an agent id" in failed(
        cli("keys", "create", "--tenant", "s", "--role", "worker", "--agent", "x", *db)
    )


def test_keys_create_refuses_a_bad_role_or_empty_tenant(cli: Cli, server: Server) -> None:
    db = ["--db", str(server.db_path)]
    assert "--role" in usage_error(cli("keys", "create", "--tenant", "t", "--role", "root", *db))
    assert "--tenant" in usage_error(cli("keys", "create", *db))
    assert "--tenant" in failed(cli("keys", "create", "--tenant", " ", *db))


@pytest.mark.timeout(120)
def test_keys_revoke_makes_the_key_fail(cli: Cli, server: Server) -> None:
    db = ["--db", str(server.db_path)]
    key = one_line(ok(cli("keys", "create", "--tenant", "default", *db)))
    ok(cli("agents", "list", api_key=key))
    key_id = API_KEY.match(key).group(1)  # type: ignore[union-attr]

    revoked = cli("keys", "revoke", key_id, *db)
    ok(revoked)
    assert key_id in revoked.stderr
    row = next(r for r in ok(cli("keys", "list", "--tenant", "default", *db)).splitlines() if r.startswith(key_id))
    assert "revoked" in row.split()

    # The server may remember a verified key for a few seconds; poll instead of sleeping.
    deadline = time.monotonic() + 15
    while True:
        result = cli("agents", "list", api_key=key)
        if result.returncode != 0:
            break
        assert time.monotonic() < deadline, "the revoked key still works"
        time.sleep(0.5)
    assert "UNAUTHENTICATED" in failed(result)

    # Revoking by the key itself works too, and an unknown id is one clear line.
    other = one_line(ok(cli("keys", "create", "--tenant", "default", *db)))
    ok(cli("keys", "revoke", other, *db))
    assert "no API key with id" in failed(cli("keys", "revoke", "0123456789abcdef", *db))


def test_token_signs_with_the_database_secret_the_server_uses(cli: Cli, server: Server) -> None:
    agent = new_agent(cli, "token-agent")
    task = new_task(cli, agent)
    token = one_line(ok(cli("token", "--tenant", "default", "--ttl", "15m", "--db", str(server.db_path))))
    assert token.count(".") == 2, token
    assert field(ok(cli("status", task, api_key=token)), "status") == "queued"
    assert agent in ok(cli("agents", "list", api_key=token))


def test_a_token_of_another_tenant_cannot_see_the_task(cli: Cli, server: Server) -> None:
    agent = new_agent(cli, "isolated")
    task = new_task(cli, agent)
    other = one_line(ok(cli("token", "--tenant", "someone-else", "--db", str(server.db_path))))
    unknown = str(uuid.uuid4())
    missing = failed(cli("status", unknown, api_key=other))
    foreign = failed(cli("status", task, api_key=other))
    assert "TASK_NOT_FOUND" in foreign
    assert foreign.replace(task, "ID") == missing.replace(unknown, "ID"), "answers exactly like a missing task"
    assert "TASK_NOT_FOUND" in failed(cli("cancel", task, api_key=other))
    assert "AGENT_NOT_FOUND" in failed(cli("tasks", "list", agent, api_key=other))
    assert agent not in ok(cli("agents", "list", api_key=other))
    assert field(ok(cli("status", task)), "status") == "queued", "the owner still sees it, untouched"


@pytest.mark.parametrize("ttl", ["0", "banana", "-5m", "1w"])
def test_token_refuses_a_bad_ttl(cli: Cli, server: Server, ttl: str) -> None:
    line = usage_error(cli("token", "--tenant", "t", f"--ttl={ttl}", "--db", str(server.db_path)))
    assert "--ttl" in line and "not a duration" in line, line


def test_token_refuses_a_short_secret(cli: Cli, server: Server) -> None:
    line = failed(cli("token", "--tenant", "t", "--jwt-secret", "short", "--db", str(server.db_path)))
    assert "secret" in line, line


@pytest.mark.parametrize(
    "command", [["keys", "create", "--tenant", "t"], ["keys", "list", "--tenant", "t"], ["token", "--tenant", "t"]]
)
def test_admin_commands_never_create_a_database(cli: Cli, tmp_path: Path, command: list[str]) -> None:
    typo = tmp_path / "agenttask.db"
    line = failed(cli(*command, "--db", str(typo)))
    assert "no database at" in line and str(typo) in line
    assert not typo.exists()


# --- webhooks ---


def test_webhooks_secret_rotate_list_and_retry(cli: Cli, server: Server) -> None:
    secret = one_line(ok(cli("webhooks", "secret")))
    assert secret.startswith("whsec_")
    assert one_line(ok(cli("webhooks", "secret"))) == secret  # stable until rotated
    rotated = ok(cli("webhooks", "rotate-secret", "--overlap", "1h")).splitlines()
    assert rotated[0].startswith("whsec_") and rotated[0] != secret
    assert "keeps signing too until" in rotated[1]
    assert one_line(ok(cli("webhooks", "secret"))) == rotated[0]

    client_key = one_line(ok(cli("keys", "create", "--tenant", "default", "--db", str(server.db_path))))
    assert "PERMISSION_DENIED" in failed(cli("webhooks", "secret", api_key=client_key))

    agent = new_agent(cli)
    # A literal private address is refused at once (the server runs without --webhook-allow).
    refused = failed(cli("submit", agent, "x", "--webhook-url", "http://10.0.0.1/hook"))
    assert "INVALID_ARGUMENT" in refused and "webhook_url" in refused
    task = new_task(cli, agent, "hooked", "--webhook-url", "https://hooks.example.com/agenttasks")
    ok(cli("cancel", task))
    listed = ok(cli("webhooks", "list", task))
    assert "task.cancelled" in listed, listed
    assert json.loads(ok(cli("webhooks", "list", task, "--json")))[0]["event_type"] == "task.cancelled"
    poll_task = new_task(cli, agent)
    empty = cli("webhooks", "list", poll_task)
    assert ok(empty) == ""
    assert "no webhook deliveries" in empty.stderr
    assert "DELIVERY_NOT_FOUND" in failed(cli("webhooks", "retry", str(uuid.uuid4())))
