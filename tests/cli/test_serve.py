"""`agenttasks serve` as a real process: first-start admin key, clean port clash, SIGTERM drain, JWT secret."""

from __future__ import annotations

import re
import secrets
import socket
from pathlib import Path

import pytest

from tests.support import PostgresDatabases

from .support import (
    ADMIN_KEY_PREFIX,
    LISTENING,
    Spawned,
    StartServer,
    assert_clean_stop,
    failed,
    free_port,
    ok,
    one_line,
    run_cli,
)

pytestmark = pytest.mark.slow

ADMIN_KEY_LINE = re.compile(r"^admin api key: atk_[0-9a-f]{16}_[A-Za-z0-9_-]{20,}$")


@pytest.mark.timeout(120)
def test_a_database_password_is_never_printed(postgres_databases: PostgresDatabases, tmp_path: Path) -> None:
    with postgres_databases.database(migrated=False) as url:
        # Trust auth ignores the password, so it is accepted; it must still never be shown.
        secret_url = url.replace("postgresql://postgres@", "postgresql://postgres:hunter2@", 1)
        server = Spawned("serve", "--db", secret_url, "--grpc-port", "0", "--no-gateway", cwd=tmp_path)
        try:
            server.wait_for_stdout(re.compile("^" + re.escape(ADMIN_KEY_PREFIX)))
        finally:
            server.stop()
        assert f"agenttasks database {secret_url.replace(':hunter2@', ':***@')}" in server.stdout.splitlines()
        unreachable = run_cli(
            "keys", "list", "--tenant", "t", "--db", "postgresql://postgres:hunter2@127.0.0.1:1/nowhere", cwd=tmp_path
        )
    assert "hunter2" not in server.stdout + server.stderr + unreachable.stdout + unreachable.stderr
    assert "postgres:***@127.0.0.1:1/nowhere" in failed(unreachable)


def as_client(address: str, credential: str, *args: str) -> list[str]:
    """The arguments of a client command against `address` with `credential` (flags, not env)."""
    return [*args, "--server", address, "--api-key", credential]


@pytest.mark.timeout(120)
def test_first_start_prints_the_admin_key_once_and_a_restart_never_again(
    start_server: StartServer, tmp_path: Path
) -> None:
    db = tmp_path / "x.db"
    first = start_server(db)
    address = first.address()
    key = first.admin_key()
    assert key.startswith("atk_")
    ok(run_cli(*as_client(address, key, "agents", "list")))
    assert_clean_stop(first)

    key_lines = [line for line in first.stdout.splitlines() if line.startswith(ADMIN_KEY_PREFIX)]
    assert key_lines == [f"{ADMIN_KEY_PREFIX}{key}"], first.stdout
    assert ADMIN_KEY_LINE.match(key_lines[0])
    assert key not in first.stderr, "the key belongs on stdout only, not in the logs"
    assert any(LISTENING.match(line) for line in first.stdout.splitlines())

    second = start_server(db)
    address = second.address()
    ok(run_cli(*as_client(address, key, "agents", "list")))  # the first key still works
    assert_clean_stop(second)
    assert "admin api key" not in second.stdout, second.stdout
    assert "admin api key" not in second.stderr
    assert key not in second.stdout + second.stderr


def test_a_port_in_use_fails_with_one_clear_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "serve", "--db", str(tmp_path / "x.db"), "--grpc-port", str(port), "--no-gateway", cwd=tmp_path
        )
    line = failed(result)
    assert f"127.0.0.1:{port}" in line
    assert line.startswith("agenttasks: ")
    assert "admin api key" not in result.stdout


@pytest.mark.timeout(120)
def test_a_failed_first_start_does_not_use_up_the_admin_key(start_server: StartServer, tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        failed(run_cli("serve", "--db", str(db), "--grpc-port", str(port), "--no-gateway", cwd=tmp_path))
    server = start_server(db)
    key = server.admin_key()
    ok(run_cli(*as_client(server.address(), key, "agents", "list")))
    assert_clean_stop(server)


@pytest.mark.timeout(120)
def test_a_second_server_on_one_sqlite_file_is_refused_in_one_line(start_server: StartServer, tmp_path: Path) -> None:
    """A SQLite file has one server: a second would change tasks the first never hears of. Admin
    commands still open the file beside it; once the first has stopped, another may start."""
    db = tmp_path / "x.db"
    first = start_server(db)
    address, key = first.address(), first.admin_key()
    second = run_cli("serve", "--db", str(db), "--grpc-port", "0", "--no-gateway", cwd=tmp_path)
    line = failed(second)
    assert line.startswith("agenttasks: ") and str(db) in line and "PostgreSQL" in line, line
    assert f"(pid {first.proc.pid})" in line, line
    ok(run_cli("keys", "create", "--db", str(db), "--tenant", "t", cwd=tmp_path))  # admin commands: allowed
    ok(run_cli(*as_client(address, key, "agents", "list")))  # the first one is untouched
    assert_clean_stop(first)
    third = start_server(db)
    ok(run_cli(*as_client(third.address(), key, "agents", "list")))
    third.kill()  # even killed, the kernel drops its claim with the process
    fourth = start_server(db)
    ok(run_cli(*as_client(fourth.address(), key, "agents", "list")))
    assert_clean_stop(fourth)


def test_an_address_that_cannot_be_bound_fails_with_one_clear_line(tmp_path: Path) -> None:
    result = run_cli("serve", "--db", str(tmp_path / "x.db"), "--grpc-host", "256.0.0.1", "--grpc-port", "0")
    assert "256.0.0.1" in failed(result)


@pytest.mark.parametrize("command", [["serve", "--grpc-port", "0", "--no-gateway"], ["keys", "list", "--tenant", "t"]])
def test_a_file_that_is_not_a_database_fails_with_one_clear_line(tmp_path: Path, command: list[str]) -> None:
    db = tmp_path / "notes.txt"
    db.write_text("these are not the tables you are looking for\n" * 100)
    line = failed(run_cli(*command, "--db", str(db), cwd=tmp_path))
    assert str(db) in line, line
    assert "not a database" in line, line


def test_a_too_short_jwt_secret_fails_with_one_clear_line(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    result = run_cli("serve", "--db", str(db), "--grpc-port", "0", "--no-gateway", "--jwt-secret", "short")
    line = failed(result)
    assert "secret" in line.lower(), line
    assert "listening" not in result.stdout


@pytest.mark.timeout(120)
def test_sigterm_ends_open_watches_resumably_and_watch_follows_the_task_after_a_restart(
    start_server: StartServer, tmp_path: Path
) -> None:
    port = free_port()
    db = tmp_path / "x.db"
    server = start_server(db, "--grpc-port", str(port))
    address, key = server.address(), server.admin_key()
    env = {"AGENTTASKS_SERVER": address, "AGENTTASKS_API_KEY": key}
    agent = one_line(ok(run_cli("agents", "create", "drain-test", env=env)))
    task = one_line(ok(run_cli("submit", agent, "wait for me", env=env)))

    watcher = Spawned("watch", task, env=env)
    try:
        watcher.wait_for_stdout(re.compile(r"^\[\d+\] queued$"))
        assert_clean_stop(server)
        # The stream ends with a resumable final message, not an error...
        watcher.wait_for_stdout(re.compile(r"^\[end\] server shutdown; task queued$"))
        # ...and watch follows the task again once the server is back.
        again = start_server(db, "--grpc-port", str(port))
        assert again.address() == address
        ok(run_cli("cancel", task, env=env))
        assert watcher.wait() == 1, watcher.stdout + watcher.stderr  # 1: it did not complete
    finally:
        watcher.kill()
    assert watcher.stdout.splitlines()[-1] == "[end] task finished; task cancelled", watcher.stdout
    assert "Traceback" not in watcher.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["flag", "env"])
def test_the_configured_jwt_secret_signs_tokens_the_server_accepts(
    start_server: StartServer, tmp_path: Path, how: str
) -> None:
    db = tmp_path / "x.db"
    # URL-safe secrets may start with '-', which argparse takes for an option unless given with '='.
    secret = "-" + secrets.token_urlsafe(32)
    if how == "flag":
        server = start_server(db, f"--jwt-secret={secret}")
    else:
        server = start_server(db, env={"AGENTTASKS_JWT_SECRET": secret})
    address = server.address()
    server.admin_key()

    by_flag = one_line(ok(run_cli("token", "--tenant", "default", f"--jwt-secret={secret}", "--db", str(db))))
    by_env = one_line(
        ok(run_cli("token", "--tenant", "default", "--db", str(db), env={"AGENTTASKS_JWT_SECRET": secret}))
    )
    for token in (by_flag, by_env):
        assert token.count(".") == 2, token
        ok(run_cli(*as_client(address, token, "agents", "list")))

    # Without the secret, `token` signs with the one generated in the database: not the server's.
    other = one_line(ok(run_cli("token", "--tenant", "default", "--db", str(db))))
    line = failed(run_cli(*as_client(address, other, "agents", "list")))
    assert "UNAUTHENTICATED" in line

    assert_clean_stop(server)
