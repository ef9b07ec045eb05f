"""The A2A peer: the A2A Python SDK's JSON-RPC server with its SQLite database task store.

Its agent executor does what the bench's worker does: it takes each task and completes it at
once. Run as its own process, the way uvicorn runs an app (one worker process):

    python -m bench.peers.a2a_server --db PATH

It prints `a2a listening on http://127.0.0.1:PORT` and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import socket

import uvicorn
from a2a.helpers.proto_helpers import new_task_from_user_message, new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_jsonrpc_routes
from a2a.server.tasks import DatabaseTaskStore, TaskUpdater
from a2a.types import a2a_pb2
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette

RPC_PATH = "/"


class CompleteAtOnce(AgentExecutor):
    """Creates the task from the message and completes it with a short text."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.message is not None  # noqa: S101
        task = context.current_task or new_task_from_user_message(context.message)
        if context.current_task is None:
            task.id = context.task_id or task.id
            task.context_id = context.context_id or task.context_id
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        await updater.complete(new_text_message("done", context_id=task.context_id, task_id=task.id))

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        raise NotImplementedError("the bench never cancels A2A tasks")


def app(db: str, url: str) -> Starlette:
    engine = create_async_engine(f"sqlite+aiosqlite:///{db}")
    card = a2a_pb2.AgentCard(
        name="bench",
        description="completes every task at once",
        version="1.0",
        supported_interfaces=[a2a_pb2.AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")],
        capabilities=a2a_pb2.AgentCapabilities(streaming=False),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[a2a_pb2.AgentSkill(id="complete", name="complete", description="completes the task", tags=["bench"])],
    )
    store = DatabaseTaskStore(engine)
    handler = DefaultRequestHandler(agent_executor=CompleteAtOnce(), task_store=store, agent_card=card)
    return Starlette(routes=create_jsonrpc_routes(handler, RPC_PATH))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", required=True)
    args = parser.parse_args()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)  # connections made before uvicorn serves wait in the backlog
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(app(args.db, url + RPC_PATH), log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    print(f"a2a listening on {url}", flush=True)
    server.run(sockets=[sock])  # uvicorn's own loop setup: uvloop and httptools when installed


if __name__ == "__main__":
    main()
