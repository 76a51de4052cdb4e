"""The main README's client section runs as written: its curl block (create, send, retry, stream,
follow a move) and its Python snippet, against a real colony."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[3] / "README.md"


def _section() -> str:
    text = README.read_text()
    start = text.index("## Clients")
    return text[start : text.index("\n## ", start + 1)]


def test_the_curl_block_runs_as_written(colony, tmp_path):
    block = re.search(
        r"<!-- client-quickstart:begin -->\n```bash\n(.*?)```\n<!-- client-quickstart:end -->",
        _section(),
        re.S,
    )
    assert block, "README: no client-quickstart block in ## Clients"
    r = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.group(1)],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "RC": colony.rc_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, f"the block failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    first = json.loads((tmp_path / "reply1.json").read_text())
    assert (first["kind"], first["seq"], first["output"]) == ("processed", 1, {"words": 2, "total": 2})
    retry = json.loads((tmp_path / "retry1.json").read_text())
    assert (retry["kind"], retry["retained"], retry["output"]) == ("duplicate", True, first["output"])
    stream = (tmp_path / "stream2.txt").read_text()
    assert stream.count("event: chunk") == 3 and "event: reply" in stream, stream
    reply = json.loads(stream.split("event: reply")[1].split("data:", 1)[1].split("\n")[0])
    assert (reply["output"], reply["chunks"], reply["complete"]) == ({"words": 3, "total": 5}, 3, True)
    third = json.loads((tmp_path / "reply3.json").read_text())
    assert (third["kind"], third["seq"], third["output"]["total"]) == ("processed", 3, 8), third


def test_the_python_snippet_runs_as_written(colony, tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", _section(), re.S)
    assert blocks, "README: no Python snippet in ## Clients"
    code = blocks[0].replace("http://127.0.0.1:7600", colony.rc_url)
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, f"the snippet failed:\n{r.stdout}\n{r.stderr}"
    lines = r.stdout.splitlines()
    assert ast.literal_eval(lines[0]) == {"words": 2, "total": 2}, r.stdout
    assert lines[1].startswith("one two three"), r.stdout
    assert ast.literal_eval(lines[1].removeprefix("one two three")) == {"words": 3, "total": 5}, r.stdout
    assert lines[2] in ("invalid_token", "unauthenticated"), r.stdout
    # What the README says it prints is what it prints.
    for line in lines[:2]:
        assert line.removeprefix("one two three") in blocks[0], f"README shows other output than {line}"
