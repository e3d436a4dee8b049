"""A newcomer's first minutes: README command 1 (`cascade serve`, no --config) serves the default cascade, the
SmolLM2 pair, and `cascade query` with an ordinary question gets an answer; so does an OpenAI chat. Real Ray
Serve, the real `cascade` command line, real models. What the models say is theirs (the student is retrained
from time to time): the test asks for an answer, not for a particular one."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

from serving.config import TOY_CONFIG, load_config
from serving.ops.local import cascade_server
from tests.conftest import need_smollm2

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_smollm2()
    with cascade_server(None, tmp_path_factory.mktemp("default_serve"), timeout=600) as s:
        yield s


def test_the_ready_line_is_the_default_config(server):
    """The served cascade is load_config()'s (the SmolLM2 pair's calibrated rule), not the toy pair's."""
    rule = load_config().deferral.resolved()
    toy = load_config(TOY_CONFIG).deferral.resolved()
    assert (rule.rule, rule.threshold) != (toy.rule, toy.threshold)
    ready = next(line for line in server.log.read_text().splitlines() if line.startswith("cascade ready:"))
    assert f"tiers weak -> strong; rule {rule.rule}, threshold {rule.threshold:.4g}" in ready


def test_cascade_query_of_an_ordinary_question_returns_text(server):
    out = subprocess.run(
        [sys.executable, "-m", "serving.ops.cli", "query", "What is the capital of France?"]
        + ["--address", server.address, "--json", "--timeout", "300"],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["text"].strip(), answer
    assert answer["tier"] in ("weak", "strong") and not answer.get("degraded")


def test_an_openai_chat_hello_returns_text(server):
    body = {"model": "cascade", "messages": [{"role": "user", "content": "Hello, who are you?"}]}
    req = urllib.request.Request(
        server.http_url + "/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=300) as resp:
        got = json.load(resp)
    assert got["choices"][0]["message"]["content"].strip(), got
