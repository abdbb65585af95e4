"""The repo's docs stand alone: links and paths resolve, and shown commands parse.

Covers README.md, docs/*.md and the chart README: every relative link points at a file or
folder of the repo, every repo path named in the text exists, nothing refers to notes outside
the repo, and every `triserve …` command shown in a code block (or a code span) is accepted by
its subcommand's parser (it is run with `--help` appended, which parses every flag before it)
and uses only flags that subcommand lists in its help.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from triserve import cli

ROOT = Path(__file__).resolve().parents[3]
DOCS = [
    ROOT / "README.md",
    ROOT / "charts" / "triserve" / "README.md",
    *sorted(ROOT.glob("docs/*.md")),
]

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_REPO_PATH = re.compile(
    r"(?<![\w./-])((?:src|docs|examples|charts|dashboards|crds|tests|tools)/[\w./-]*[\w/])"
)
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_SPAN = re.compile(r"`(triserve [^`]+)`")
#: Words that point outside the repo: design notes and shared folders are not shipped.
_OUTSIDE = re.compile(r"design card|DESIGN\.md|STYLE\.md|shared folder|/work/|\breference/\w", re.I)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in _LINK.findall(doc.read_text()):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        if not (doc.parent / target.split("#")[0]).exists():
            broken.append(target)
    assert broken == [], f"{_rel(doc)}: links to missing files {broken}"


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_repo_paths_named_exist(doc: Path) -> None:
    text = doc.read_text()
    missing = sorted(
        {
            p
            for p in _REPO_PATH.findall(text)
            if not (ROOT / p).exists() and not (doc.parent / p).exists() and "*" not in p
        }
    )
    assert missing == [], f"{_rel(doc)} names paths that do not exist: {missing}"


def test_nothing_refers_to_files_outside_the_repo() -> None:
    files = [*DOCS, *ROOT.glob("src/**/*.py"), *ROOT.glob("examples/**/*.yaml")]
    files += [*ROOT.glob("src/**/*.yaml")]
    hits = [
        f"{_rel(f)}: {m.group(0)}"
        for f in files
        for m in [_OUTSIDE.search(f.read_text())]
        if m is not None
    ]
    assert hits == []


def _commands(text: str) -> list[str]:
    found = []
    for block in _FENCE.findall(text):
        joined = block.replace("\\\n", " ")
        found += [
            line.strip() for line in joined.splitlines() if line.strip().startswith("triserve ")
        ]
    # Code spans such as `triserve bench --scenario X [--json F]`: optional parts dropped.
    found += [re.sub(r"\[[^\]]*\]", "", span) for span in _SPAN.findall(text)]
    return found


def _argv(command: str) -> list[str]:
    words = shlex.split(command, comments=True)
    for stop in ("|", "&&", ">", ";"):
        if stop in words:
            words = words[: words.index(stop)]
    return words[1:]


ALL_COMMANDS = sorted({c for doc in DOCS for c in _commands(doc.read_text())})


def test_the_docs_show_commands_of_every_kind() -> None:
    shown = {_argv(c)[0] for c in ALL_COMMANDS}
    assert {"demo", "bench", "agent", "profile"} <= shown, shown


@pytest.mark.parametrize("command", ALL_COMMANDS)
def test_shown_command_parses_and_uses_real_flags(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _argv(command)
    assert argv and argv[0] in cli.SUBCOMMANDS, f"unknown subcommand in {command!r}"
    with pytest.raises(SystemExit) as done:
        cli.main([*argv, "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0, f"{command!r} does not parse"
    flags = {w.split("=")[0] for w in argv if w.startswith("--")}
    unknown = sorted(f for f in flags if f not in out)
    assert unknown == [], f"{command!r}: flags not in `triserve {argv[0]} --help`: {unknown}"
