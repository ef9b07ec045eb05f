"""The documentation keeps up with the code: every setting and every error reason is in the README."""

from __future__ import annotations

import re
from pathlib import Path

from agenttasks.api.errors import ERROR_TABLE, INTERNAL
from agenttasks.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    documented = set(re.findall(r"^\| `AGENTTASKS_([A-Z_]+)` \|", README.read_text(), flags=re.MULTILINE))
    expected = {name.upper() for name in Settings.model_fields}
    assert documented == expected, f"missing: {expected - documented}, stale: {documented - expected}"


def test_ci_runs_the_readmes_test_command_verbatim() -> None:
    """A newcomer's second command, after its venv, is exactly what CI runs."""
    block = re.search(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert block is not None, "the README starts with a bash block of two commands"
    serve, test = block.group(1).strip().splitlines()
    prefix = "python3 -m venv .venv && . .venv/bin/activate && "
    assert serve.startswith(prefix) and test.startswith(prefix)
    ci_lines = (README.parent / ".ci" / "run").read_text().splitlines()
    assert test.removeprefix(prefix) in ci_lines


def test_every_test_docs_reliability_cites_exists() -> None:
    """docs/reliability.md names the test behind each guarantee: each file, and each test by
    name, must be there (a renamed test would otherwise leave a guarantee unproven in silence)."""
    text = (ROOT / "docs" / "reliability.md").read_text()
    cited = re.findall(r"`(tests/[\w/]+(?:\.py)?)(?:::(\w+))?`", text)
    assert len(cited) > 20
    for path, name in cited:
        target = ROOT / path
        assert target.exists(), path
        if name:
            assert f"def {name}(" in target.read_text(), f"{path}::{name}"


def test_every_error_reason_is_in_the_readmes_error_table() -> None:
    """Each reason a client can meet, with the gRPC code and HTTP status the server gives it."""
    rows = re.findall(r"^\| `([A-Z_]+)` \| ([A-Z_]*) \| (\d+|4xx) \|", README.read_text(), flags=re.MULTILINE)
    documented = {reason: (code, status) for reason, code, status in rows}
    for mapping in [*ERROR_TABLE.values(), INTERNAL]:
        assert documented.get(mapping.reason) == (mapping.code.name, str(mapping.http_status)), mapping.reason
