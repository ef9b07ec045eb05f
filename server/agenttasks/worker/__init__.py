"""Write an agent in Python: a handler per task, run by a `Worker` that talks to the server.

```python
from agenttasks.worker import Worker, TaskContext, TaskFailed, Result

async def handle(ctx: TaskContext) -> str | Result:
    await ctx.progress(10, "reading")
    answer = await ctx.ask("Which year?")
    return f"done for {answer}"

async with Worker(server="127.0.0.1:50051", api_key=KEY, agent_id=AGENT, handler=handle, capacity=4):
    ...
```

`ExecRunner` (in `agenttasks.worker.exec_runner`) is a ready handler that runs a command per
task; `agenttasks worker AGENT_ID -- COMMAND` puts the two together. See docs/worker-protocol.md.
"""

from agenttasks.worker.connection import ConnectRefused
from agenttasks.worker.context import (
    ClientMessage,
    Handler,
    LeaseLost,
    ReportRejected,
    Result,
    TaskContext,
    TaskFailed,
)
from agenttasks.worker.exec_runner import ExecRunner
from agenttasks.worker.sdk import Worker

__all__ = [
    "ClientMessage",
    "ConnectRefused",
    "ExecRunner",
    "Handler",
    "LeaseLost",
    "ReportRejected",
    "Result",
    "TaskContext",
    "TaskFailed",
    "Worker",
]
