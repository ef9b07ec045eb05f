"""`agenttasks`: the command line. Run `agenttasks --help`, or `agenttasks COMMAND --help`.

Every command has help text (a test checks it), and every failure is one clear line on stderr
with a non-zero exit: no stack traces for bad input or an unreachable server.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from agenttasks import __version__
from agenttasks.cli import commands, gateway_cmd, store_cmds, webhook_cmds, worker_cmd
from agenttasks.cli.client import Client, CliError
from agenttasks.core.model import Role, TaskStatus
from agenttasks.observe import logs
from agenttasks.settings import NOT_READ_BY_SERVE, Settings

_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """'90', '90s', '15m', '1h', '7d' -> seconds."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (examples: 90s, 15m, 1h, 7d)")
    return int(match.group(1)) * _UNITS[match.group(2)]


ClientCommand = Callable[[Client, argparse.Namespace], int]
LocalCommand = Callable[[Settings, argparse.Namespace], int]


_ADMIN = "agenttasks.cli.admin"


def _lazy(module: str, name: str) -> LocalCommand:
    """A command whose module is imported only when it runs: the admin and worker commands pull
    in the store, JWT and worker stacks, which every other command would otherwise pay for."""

    def run(settings: Settings, args: argparse.Namespace) -> int:
        handler: LocalCommand = getattr(importlib.import_module(module), name)
        return handler(settings, args)

    return run


EPILOG = """\
first steps:
  agenttasks serve                       # prints 'admin api key: ...' on first start
  export AGENTTASKS_API_KEY=atk_...      # that key
  agenttasks agents create my-agent      # prints the agent id
  agenttasks submit AGENT_ID "summarise the report" --watch

settings also come from AGENTTASKS_* environment variables (see the README); flags win.
"""


def _priority(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 10:
        raise argparse.ArgumentTypeError(f"must be between 1 and 10, got {value}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (plus the usage), exit 2, like argparse but without the noise."""

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message}\n(see '{self.prog} --help')\n")


def _until_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--until",
        choices=[s.value for s in TaskStatus if not s.terminal],
        help="stop following (exit 0) once the task reaches this status, e.g. awaiting_input",
    )


JSON_OBJECT = "print one JSON object (the API's snake_case fields) instead of text"
JSON_ARRAY = "print one JSON array of everything listed (the API's snake_case fields) instead of a table"


def _json_option(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("--json", action="store_true", help=help_text)


def _client_options(p: argparse.ArgumentParser, json_help: str) -> None:
    p.add_argument("--server", help="gRPC address of the service (env AGENTTASKS_SERVER; default 127.0.0.1:50051)")
    p.add_argument("--api-key", help="API key or JWT to send (env AGENTTASKS_API_KEY)")
    _json_option(p, json_help)


def _log_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="log lines on stderr as text (default) or json: one JSON object per line (env AGENTTASKS_LOG_FORMAT)",
    )
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="least severe line logged (env AGENTTASKS_LOG_LEVEL; default info)",
    )


def _db_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        help="the store: a SQLite file or a postgresql://user@host/dbname URL "
        "(env AGENTTASKS_DB; default ./agenttasks.db)",
    )


def _add(
    sub: Any,
    name: str,
    help_text: str,
    *,
    client: ClientCommand | None = None,
    local: LocalCommand | None = None,
    json_help: str = JSON_OBJECT,
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    if client is not None:
        _client_options(p, json_help)
        p.set_defaults(client_command=client)
    if local is not None:
        p.set_defaults(local_command=local)
    return p


def settings_help() -> str:
    """Every setting `serve` reads, with its environment variable and default: made from
    Settings itself, so a setting added there is listed here too (the README has the table)."""
    lines = ["settings: each one can also be set in the environment (an option above wins):", ""]
    for name, field in Settings.model_fields.items():
        if name in NOT_READ_BY_SERVE:
            continue
        default = field.default
        shown = "unset" if default is None else str(default).lower() if isinstance(default, bool) else str(default)
        lines.append(f"  AGENTTASKS_{name.upper()} (default {shown or 'empty'})")
        lines += textwrap.wrap(field.description or "", 76, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="agenttasks",
        description="Hand work to AI agents and follow it to a result.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"agenttasks {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = _add(sub, "serve", "Start the service (gRPC, background loops, REST gateway) in the foreground.")
    _db_option(p)
    p.add_argument("--grpc-host", help="address to bind gRPC (default 127.0.0.1)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (default 50051; 0 picks a free one)")
    p.add_argument("--http-host", help="address to bind the REST gateway (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, help="REST gateway port (default 8080)")
    p.add_argument("--no-gateway", action="store_true", help="run gRPC only, without the REST gateway")
    p.add_argument("--jwt-secret", help="HS256 secret for JWTs (env AGENTTASKS_JWT_SECRET; default: generated)")
    p.add_argument("--public-base-url", help="base of poll_url/cancel_url in answers")
    p.add_argument(
        "--webhook-allow",
        metavar="CIDR[,CIDR...]",
        help="networks webhooks may reach although private, e.g. 127.0.0.0/8,::1/128 for local development",
    )
    _log_options(p)
    p.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics at /metrics on this port (default 0: off)"
    )
    p.add_argument("--metrics-host", help="address the metrics ports bind (default 127.0.0.1)")
    p.add_argument(
        "--gateway-metrics-port",
        type=int,
        help="serve the REST gateway's (Envoy's) own statistics at /stats/prometheus on this port (default 0: off)",
    )
    p.set_defaults(serve=True)
    p.epilog = settings_help()
    p.formatter_class = argparse.RawDescriptionHelpFormatter

    p = _add(sub, "gateway", gateway_cmd.HELP, local=_lazy("agenttasks.cli.gateway_cmd", "run"))
    gateway_cmd.add_arguments(p)
    _log_options(p)

    keys = _add(sub, "keys", "Manage API keys (acts on the database file; no server needed).")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", parser_class=_Parser, required=True)
    p = _add(
        keys_sub,
        "create",
        "Create an API key and print it (it is shown only this once).",
        local=_lazy(_ADMIN, "keys_create"),
    )
    _db_option(p)
    p.add_argument("--tenant", required=True, help="tenant the key acts for")
    p.add_argument("--role", choices=[r.value for r in Role], default="client", help="what it may do (default client)")
    p.add_argument("--description", default="", help="a note to tell keys apart")
    p.add_argument("--agent", help="for a worker key: the one agent it may serve (recommended; default any)")
    _json_option(p, 'print {"api_key": ..., "key_id": ..., ...} instead of the key alone')
    p = _add(
        keys_sub,
        "list",
        "List a tenant's API keys (ids and roles, never secrets).",
        local=_lazy(_ADMIN, "keys_list"),
    )
    _db_option(p)
    p.add_argument("--tenant", required=True, help="tenant whose keys to list")
    _json_option(p, JSON_ARRAY)
    p = _add(
        keys_sub,
        "revoke",
        "Revoke an API key by id (or by the key itself).",
        local=_lazy(_ADMIN, "keys_revoke"),
    )
    _db_option(p)
    p.add_argument("key_id", help="the key id (the part after 'atk_')")
    _json_option(p, 'print {"key_id": ..., "revoked": true} on stdout')

    p = _add(
        sub,
        "token",
        "Print a JWT for a tenant, signed with the server's HS256 secret.",
        local=_lazy(_ADMIN, "token"),
    )
    _db_option(p)
    p.add_argument("--tenant", required=True, help="tenant the token acts for")
    p.add_argument("--ttl", type=parse_duration, default=3600, help="lifetime, e.g. 15m, 1h, 7d (default 1h)")
    p.add_argument("--role", choices=[r.value for r in Role], default="client", help="role claim (default client)")
    p.add_argument("--agent", help="for a worker token: the one agent it may serve (agent_id claim)")
    p.add_argument("--jwt-secret", help="sign with this secret instead of the one in the database")
    _json_option(p, 'print {"token": ..., "expires_at": ...} instead of the token alone')

    store = _add(sub, "store", store_cmds.GROUP_HELP)
    store_sub = store.add_subparsers(dest="store_command", metavar="ACTION", parser_class=_Parser, required=True)
    p = _add(store_sub, "copy", store_cmds.COPY_HELP, local=_lazy("agenttasks.cli.store_cmds", "copy"))
    store_cmds.add_arguments(p)

    agents = _add(sub, "agents", "Create and manage agents.")
    agents_sub = agents.add_subparsers(dest="agents_command", metavar="ACTION", parser_class=_Parser, required=True)
    p = _add(agents_sub, "create", "Create an agent and print its id.", client=commands.agents_create)
    p.add_argument("name", help="a name for people")
    p.add_argument("--description", default="", help="what the agent does")
    p.add_argument("--default-timeout", type=_positive, help="running-time bound of its tasks in seconds (3600)")
    p.add_argument("--max-attempts", type=_positive, help="starts allowed per task before it fails (3)")
    p.add_argument("--input-timeout", type=_positive, help="how long a task may await input in seconds (86400)")
    p.add_argument("--metadata", help="JSON object kept with the agent")
    for action, text in [
        ("get", "Show an agent."),
        ("pause", "Pause an agent: its queue is kept, nothing is dispatched, submits are refused."),
        ("resume", "Make an agent active again."),
        ("stop", "Stop an agent: submits are refused and nothing is dispatched."),
        ("delete", "Delete an agent, cancelling its unfinished tasks."),
    ]:
        handler = {
            "get": commands.agents_get,
            "delete": commands.agents_delete,
        }.get(action, commands.agents_status)
        p = _add(agents_sub, action, text, client=handler)
        p.add_argument("agent_id", help="the agent's id")
    _add(agents_sub, "list", "List your agents.", client=commands.agents_list, json_help=JSON_ARRAY)

    p = _add(
        sub,
        "submit",
        "Submit a task to an agent and print its id.",
        client=commands.submit,
        json_help="print the answer as one JSON object; with --watch, JSON Lines (one compact JSON object "
        "per line): the answer, then one per event",
    )
    p.add_argument("agent_id", help="the agent's id")
    p.add_argument("message", help="the task's instructions")
    p.add_argument("--priority", type=_priority, help="1 (lowest) to 10 (highest); default 5")
    p.add_argument("--timeout", type=_positive, help="running-time bound in seconds (overrides the agent's)")
    p.add_argument("--metadata", help="JSON object kept with the task")
    p.add_argument("--webhook-url", help="deliver the result to this URL (callback_mode webhook)")
    p.add_argument("--request-id", help="idempotency key: a retry with the same key returns the same task")
    p.add_argument("--watch", action="store_true", help="then follow the task until it ends")
    _until_option(p)

    p = _add(
        sub,
        "submit-batch",
        "Submit many tasks to an agent from a JSON Lines file and print their ids, in order.",
        client=commands.submit_batch,
        json_help="print JSON Lines instead of ids: one compact JSON object (a Submit answer) per task, in order",
    )
    p.add_argument("agent_id", help="the agent's id")
    p.add_argument(
        "file",
        help='one Submit body per line, e.g. {"message": "...", "priority": 8, "request_id": "..."}; '
        "- reads standard input. Every line is checked first; then up to 500 go in each call, all or none.",
    )

    p = _add(sub, "status", "Show a task's status, progress and result.", client=commands.status)
    p.add_argument("task_id", help="the task's id")
    p = _add(
        sub,
        "watch",
        "Follow a task live until it ends (exit 0 if it completed).",
        client=commands.watch,
        json_help="print JSON Lines instead of text: one compact JSON object per event, as it happens",
    )
    p.add_argument("task_id", help="the task's id")
    p.add_argument("--after", type=int, default=0, help="also replay stored events after this sequence number")
    _until_option(p)
    p = _add(sub, "cancel", "Cancel a task.", client=commands.cancel)
    p.add_argument("task_id", help="the task's id")
    p = _add(sub, "send", "Send a message to a task (answers an agent awaiting input).", client=commands.send)
    p.add_argument("task_id", help="the task's id")
    p.add_argument("message", help="the message")
    p.add_argument("--request-id", help="idempotency key for the message")

    hooks = _add(sub, "webhooks", "Webhook deliveries and the signing secret.")
    hooks_sub = hooks.add_subparsers(dest="webhooks_command", metavar="ACTION", parser_class=_Parser, required=True)
    p = _add(
        hooks_sub,
        "list",
        "Show a task's webhook deliveries and how they went.",
        client=webhook_cmds.list_deliveries,
        json_help=JSON_ARRAY,
    )
    p.add_argument("task_id", help="the task's id")
    p = _add(hooks_sub, "retry", "Send a dead webhook delivery again now.", client=webhook_cmds.retry)
    p.add_argument("delivery_id", help="the delivery's id (see 'webhooks list')")
    _add(hooks_sub, "secret", "Print the tenant's webhook signing secret (admin key).", client=webhook_cmds.secret)
    p = _add(
        hooks_sub,
        "rotate-secret",
        "Replace the signing secret; the old one keeps signing during the overlap (admin key).",
        client=webhook_cmds.rotate_secret,
    )
    p.add_argument("--overlap", type=parse_duration, help="how long the old secret keeps signing too (default 24h)")

    tasks = _add(sub, "tasks", "List tasks.")
    tasks_sub = tasks.add_subparsers(dest="tasks_command", metavar="ACTION", parser_class=_Parser, required=True)
    p = _add(
        tasks_sub, "list", "List an agent's tasks, newest first.", client=commands.tasks_list, json_help=JSON_ARRAY
    )
    p.add_argument("agent_id", help="the agent's id")
    p.add_argument("--status", help="only tasks in this status")
    p.add_argument("--limit", type=_positive, default=50, help="at most this many (default 50)")

    p = _add(sub, "worker", worker_cmd.HELP, local=_lazy("agenttasks.cli.worker_cmd", "run"))
    worker_cmd.add_arguments(p)
    _log_options(p)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    overrides: dict[str, Any] = {}
    for name in (
        "db",
        "grpc_host",
        "grpc_port",
        "http_host",
        "http_port",
        "upstream",
        "grpc_front_host",
        "grpc_front_port",
        "jwt_secret",
        "public_base_url",
        "webhook_allow",
        "metrics_port",
        "metrics_host",
        "gateway_metrics_port",
        "server",
        "api_key",
        "log_format",
        "log_level",
    ):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "no_gateway", False):
        overrides["gateway"] = False
    try:
        return Settings(**overrides)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "settings"
        raise CliError(f"bad setting {where}: {first['msg']}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        settings = settings_from(args)
        if getattr(args, "serve", False):
            from agenttasks.cli.serve import serve  # the server's imports are not needed by clients

            return serve(settings)
        if (local := getattr(args, "local_command", None)) is not None:
            code: int = local(settings, args)
            return code
        if (remote := getattr(args, "client_command", None)) is not None:
            client = Client(settings)
            try:
                code = remote(client, args)
                return code
            finally:
                client.close()
        parser.print_help()
        return 2
    except CliError as error:
        logs.say(f"agenttasks: {error.message}", logging.ERROR)  # a JSON line once logs are JSON
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`agenttasks watch T | head`): that is not an error to report.
        # Point stdout at /dev/null so the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    raise SystemExit(main())
