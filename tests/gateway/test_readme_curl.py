"""The README's curl walkthrough runs as written through a real `agenttasks serve` and its Envoy."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.gateway.serve_process import ADMIN_KEY, REST_LISTENING, Serve

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- tour:curl -->"


def curl_tour() -> str:
    text = README.read_text()
    start = text.index("```bash\n", text.index(MARKER)) + len("```bash\n")
    return text[start : text.index("```", start)]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_curl_walkthrough_runs_as_written(tmp_path: Path) -> None:
    for tool in ("curl", "jq"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed; the README's walkthrough needs it (apt-get install {tool})")
    # Following the README must leave the reader's directory as it was (a checkout stays clean):
    # scratch files go to mktemp's directory, here one the test can look into.
    cwd, scratch = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    scratch.mkdir()
    serve = Serve(tmp_path / "walk.db", "--http-port", "0")
    try:
        url = serve.line(REST_LISTENING)
        key = serve.line(ADMIN_KEY)
        script = re.sub(r"^API=.*$", f"API={url}", curl_tour(), count=1, flags=re.MULTILINE)
        env = {**os.environ, "AGENTTASKS_API_KEY": key, "TMPDIR": str(scratch)}
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    finally:
        serve.close()
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    out = result.stdout
    assert list(cwd.iterdir()) == []
    (made,) = scratch.iterdir()
    assert "HTTP/1.1 202 Accepted" in out, out
    submitted = json.loads((made / "submit.txt").read_text().splitlines()[-1])
    assert submitted["status"] == "queued" and submitted["poll_url"].startswith(url), submitted
    assert '"priority": 8' in out and '"status": "queued"' in out, out
    assert re.search(r"^cancelled$", out, re.MULTILINE), out
    events = [json.loads(line[len("data: ") :]) for line in (made / "events.txt").read_text().splitlines() if line]
    # Live: the snapshot, the cancel, the end (on a slow machine the watch may connect after the
    # cancel; it then starts from a cancelled snapshot, and still ends the same way).
    assert events[0]["type"] == "snapshot" and events[-1]["type"] == "end", events
    assert events[-1]["status"] == "cancelled" and events[-1]["reason"] == "TASK_FINISHED"
