"""What a workload reports: one `Outcome` per measured system, with plain numbers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["ok", "skipped", "failed"]


@dataclass(slots=True)
class Outcome:
    name: str
    """Stable key, e.g. `submit_grpc`, `fanout_10000`."""
    title: str
    status: Status = "ok"
    reason: str = ""
    """Why it was skipped or failed."""
    load: str = ""
    """The load it ran under, in words."""
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping in the JSON (per-thread CPU, profile summaries)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
