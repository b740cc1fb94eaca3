"""The documentation's code blocks, links and tables, checked against the code so that they cannot go stale.

Checked files: README.md, CHANGELOG.md, bench/README.md and docs/*.md. What a
fenced block's info string asks for:

* ```` ```python ````: a whole example. Linted with the project's ruff rules
  (``ruff check`` and ``ruff format --check``), then run in a fresh namespace
  with the repository root as the current directory and first on
  ``sys.path`` (as ``python -m pytest`` run from the root has it). Every
  ``Plugin`` subclass it defines is registered as the plugin loader would
  register it, and every ``test_*`` function it defines is called; tests
  that take arguments (pytest fixtures such as the kit's ``apisix``) are run
  by pytest in a subprocess, with the project's pytest settings, from the root.
* ```` ```python fragment ````: a piece of a larger program (a method, a line
  of a plugin file). Linted with undefined, unused and unread names allowed,
  and compiled.
* ```` ```python file=PATH ````: an excerpt of the repository's file PATH: its
  lines must appear there, in a row and unchanged (the file itself is linted
  and tested with the project).
* ```` ```json ````, ```` ```toml ````, ```` ```yaml ````: must parse.

Any other block (``sh``, ``text``, ``mermaid`` ...) is text. Besides the
blocks: every relative link must name a file of the repository (and a heading
of it, when it names one), the settings table of docs/configuration.md must list exactly the runner's
settings, and the README's quickstart (its route and the replies it shows)
is replayed against a real runner serving ``plugins/``.
"""

from __future__ import annotations

import inspect
import itertools
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from helpers import EXAMPLE_PLUGINS

from runner import Plugin
from runner.config import SETTINGS, flag
from runner.plugins import PluginRegistry
from runner.testing import RunnerProcess

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# In fragments: names defined elsewhere (F821), unused (F401, F841), redefined (F811), bare expressions (B018).
FRAGMENT_IGNORES = "F401,F811,F821,F841,B018"


@dataclass
class Block:
    path: Path
    line: int  # of the block's first line in the file
    language: str
    options: str
    source: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    found, lines = [], path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"( *)```(\w*) *(.*)$", lines[i])
        i += 1
        if opening is None:
            continue
        indent, start, body = len(opening[1]), i + 1, []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:])
            i += 1
        i += 1
        found.append(Block(path, start, opening[2], opening[3], "\n".join(body) + "\n"))
    return found


ALL = [block for path in DOCS for block in blocks(path)]
PYTHON = [b for b in ALL if b.language == "python"]


def where(block: Block) -> str:
    return block.where


def ruff(block: Block, *args: str) -> None:
    # The stdin name puts the block in the repository, so the project's configuration applies.
    name = f"{block.path.relative_to(ROOT)}.line{block.line}.py"
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--stdin-filename", name, "-"],
        input=block.source,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, f"{block.where}: ruff {args[0]} (lines counted from the block's first):\n" + (
        result.stdout + result.stderr
    )


@pytest.mark.parametrize("block", [b for b in PYTHON if not b.options], ids=where)
def test_a_whole_python_example_is_clean_and_runs(
    block: Block, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ruff(block, "check", "--output-format", "concise")
    ruff(block, "format", "--check", "--diff")
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    module = f"docs_example_{block.line}"
    namespace: dict[str, object] = {"__name__": module}
    # Padded so that a traceback names the documentation's own line.
    exec(compile("\n" * (block.line - 1) + block.source, str(block.path), "exec"), namespace)
    registry = PluginRegistry()
    for value in list(namespace.values()):
        if isinstance(value, type) and issubclass(value, Plugin) and value.__module__ == module:
            registry.register(value, block.where)
    tests = [value for name, value in namespace.items() if name.startswith("test_") and inspect.isfunction(value)]
    if any(inspect.signature(test).parameters for test in tests):
        run_with_pytest(block, tmp_path)
    for test in tests:
        if not inspect.signature(test).parameters:
            test()


def run_with_pytest(block: Block, directory: Path) -> None:
    """Tests that take fixtures (the kit's ``apisix``...): the block as a test file, run by pytest."""
    test_file = directory / f"test_{block.path.stem.lower()}_line{block.line}.py"
    test_file.write_text(block.source, encoding="utf-8")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-c",
            str(ROOT / "pyproject.toml"),
            str(test_file),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, f"{block.where}, run by pytest:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("block", [b for b in PYTHON if b.options == "fragment"], ids=where)
def test_a_python_fragment_is_clean_and_compiles(block: Block) -> None:
    ruff(block, "check", "--output-format", "concise", "--extend-ignore", FRAGMENT_IGNORES)
    ruff(block, "format", "--check", "--diff")
    compile(block.source, block.where, "exec")


@pytest.mark.parametrize("block", [b for b in PYTHON if b.options.startswith("file=")], ids=where)
def test_a_python_excerpt_is_in_its_file_unchanged(block: Block) -> None:
    source = (ROOT / block.options.removeprefix("file=")).read_text(encoding="utf-8")
    assert block.source in source, f"{block.where} is not an unchanged excerpt of {block.options[5:]}"


def test_every_python_block_has_a_known_kind() -> None:
    unknown = [b.where for b in PYTHON if b.options and b.options != "fragment" and not b.options.startswith("file=")]
    assert unknown == []


PARSERS = {"json": json.loads, "toml": tomllib.loads, "yaml": yaml.safe_load}


@pytest.mark.parametrize("block", [b for b in ALL if b.language in PARSERS], ids=where)
def test_a_data_block_parses(block: Block) -> None:
    PARSERS[block.language](block.source)


def anchors(path: Path) -> set[str]:
    """The fragment names GitHub gives ``path``'s headings, and its explicit ``<a id>``s."""
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    names = set(re.findall(r'<a id="([^"]+)">', text))
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE):
        names.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return names


def test_relative_links_name_files_and_headings_of_the_repository() -> None:
    broken = []
    for path in DOCS:
        text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
        for target, fragment in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            resolved = (path.parent / target).resolve() if target else path
            if not resolved.is_relative_to(ROOT) or not resolved.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
            elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
                broken.append(f"{path.relative_to(ROOT)}: {target}#{fragment}")
    assert broken == []


def test_the_settings_table_lists_every_setting_with_its_flag_and_variable() -> None:
    section = (ROOT / "docs" / "configuration.md").read_text().split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    table = {}
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        table[cells[0].strip("`")] = (cells[1], cells[2])
    expected = {s.name: (f"`{flag(s)}`", f"`{s.env}`") for s in SETTINGS}
    assert {name: table.get(name) for name in expected} == expected
    assert set(table) == set(expected)


# --- the README's quickstart, replayed against a real runner -------------------------


def quickstart() -> tuple[list[tuple[str, str]], list[Block]]:
    """The README's route conf (from its Admin API call) and the request blocks that show a reply."""
    readme = blocks(ROOT / "README.md")
    [admin] = [b for b in readme if b.language == "sh" and "/apisix/admin/routes/" in b.source]
    route = json.loads(admin.source.split("-d '", 1)[1].rsplit("'", 1)[0])
    conf = [(entry["name"], entry["value"]) for entry in route["plugins"]["ext-plugin-pre-req"]["conf"]]
    requests = [b for b in readme if b.language == "text" and b.source.startswith("$ curl")]
    assert requests, "the quickstart shows no request"
    return conf, requests


def test_the_quickstart_replies_are_what_the_runner_answers() -> None:
    conf, requests = quickstart()
    with RunnerProcess(EXAMPLE_PLUGINS) as proc, proc.client() as apisix:
        token = apisix.prepare_conf(conf)
        for block in requests:
            command, status_line, *rest = block.source.splitlines()
            words = shlex.split(command.removeprefix("$ "))
            given = [h.split(": ", 1) for prev, h in itertools.pairwise(words) if prev == "-H"]
            headers = [(name.lower(), value) for name, value in given]  # as nginx sends them
            path = next(w for w in words if w.startswith("http://")).split("/", 3)[3]
            reply = apisix.http_req_call(token, path="/" + path, headers=headers)
            blank = rest.index("")
            shown = [line.split(": ", 1) for line in rest[:blank] if line != "..."]
            assert (reply.err, reply.action, reply.status) == (None, "stop", int(status_line.split()[1])), block.where
            # APISIX sets a Stop's header names lower-cased.
            assert {(n.lower(), v) for n, v in shown} <= {(n.lower(), v) for n, v in reply.headers}, block.where
            body = "\n".join(rest[blank + 1 :])
            assert (reply.body or b"").decode() in (body, body + "\n"), block.where  # curl shows no final newline
