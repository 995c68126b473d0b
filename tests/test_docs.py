"""The docs' code examples run as written, and the README's Quick start matches CI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("page", ["library.md"])
def test_doc_examples_run(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # examples may write files
    namespace: dict = {"__name__": "__docs__"}
    for block in python_blocks(ROOT / "docs" / page):
        exec(compile(block, f"docs/{page}", "exec"), namespace)
    if page == "library.md":  # the checkpoints its shell commands read
        assert (tmp_path / "runs/lightning/fxdnat.pt").is_file()
        assert (tmp_path / "runs/hf/fxdnat.pt").is_file()


def quick_start() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```\w*\n(.*?)```", section, flags=re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_quick_start_has_two_commands_and_ci_runs_both_in_order():
    commands = quick_start()
    assert len(commands) == 2
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    # both, one after the other in one checkout, as a newcomer runs them; then the slow tests
    start = ci.index(commands[0])
    assert ci[start : start + 3] == [*commands, ".venv/bin/pytest -m slow"]


def test_relative_links_in_the_docs_point_at_files():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            path = target.split("#", 1)[0]
            if path and "://" not in path and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken
