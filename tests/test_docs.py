"""The documentation keeps up with the code: every setting is in the README's table."""

from __future__ import annotations

import re
from pathlib import Path

from agenttasks.settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    documented = set(re.findall(r"^\| `AGENTTASKS_([A-Z_]+)` \|", README.read_text(), flags=re.MULTILINE))
    expected = {name.upper() for name in Settings.model_fields}
    assert documented == expected, f"missing: {expected - documented}, stale: {documented - expected}"
