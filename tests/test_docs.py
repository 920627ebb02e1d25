"""README.md and docs/ cannot rot: every path, module, ``tgdfer`` command and flag they name exists.

``make docs`` (mkdocs ``--strict``) catches broken links, pages missing from the nav and references to names the API
reference lacks; this test catches what a Markdown build cannot see: the code the text talks about. Commands and
flags are checked against the CLI itself (the typer app's registered commands and their parameters), paths against
the repository, dotted ``tgdfer.x.y`` names by importing them.
"""

from __future__ import annotations

import importlib
import re
from functools import cache
from pathlib import Path

import pytest
import typer

from tgdfer.cli import app

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
CHECKED_DIRS = ("tgdfer", "bench", "tests", "docs", "pipelines")

PATH = re.compile(r"(?<![\w./-])(?:" + "|".join(CHECKED_DIRS) + r")/[\w./{},*<>-]*")
MODULE = re.compile(r"(?<![\w./-])tgdfer(?:\.[A-Za-z_]\w*)+")
COMMAND = re.compile(r"(?<![\w./-])tgdfer ([a-z][a-z-]*)")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)  # (language, code)
INLINE = re.compile(r"`([^`\n]+)`")
# Flags of other tools that the docs show beside tgdfer's (torchrun, pip, pytest, mkdocs, sbatch, ffmpeg).
OTHER_TOOLS = {
    "torchrun": {"--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port"},
    "pip": {"--no-deps", "--upgrade"},
    "pytest": {"--durations"},
    "mkdocs": {"--strict"},
    "ruff": {"--check", "--fix"},
    "DFER-CLIP's train_DFEW.sh": {"--contexts-number", "--class-specific-contexts"},
}


@cache
def cli() -> dict[str, set[str]]:
    """Every registered command of the typer app -> its option strings (``--x`` and ``--no-x`` of a bool)."""
    group = typer.main.get_command(app)  # typer's own click classes: read them by attribute
    commands = {name: _options(command) for name, command in group.commands.items()}
    commands[""] = _options(group)  # the group's own (--version, --help)
    return commands


def _options(command) -> set[str]:
    found = {"--help"}
    for param in command.params:
        if param.param_type_name == "option":
            found |= {o for o in (*param.opts, *param.secondary_opts) if o.startswith("--")}
    return found


def _code(text: str) -> list[str]:
    """The code of a Markdown text, one logical line each: fenced blocks (backslash continuations joined, comments
    after `` #`` dropped) and inline code spans."""
    lines = []
    for language, block in FENCE.findall(text):
        if language not in ("bash", "sh", "console"):
            continue  # a diagram, a file layout, CSV or Python: its "--" are not flags
        for line in block.replace("\\\n", " ").splitlines():
            if line.lstrip().startswith("#SBATCH"):
                continue
            lines.append(re.split(r"\s#\s", line)[0])
    prose = FENCE.sub("", text)
    lines += INLINE.findall(prose)
    return lines


def _segments(line: str) -> list[str]:
    """A shell line cut at pipes, ``;`` and ``&&``: each part is one program's arguments."""
    return [part for part in re.split(r"\|\||&&|[|;]", line) if part.strip()]


def _bench_flags(script: str) -> set[str]:
    """A benchmark's flags: the ``"--x"`` strings its argparse declares."""
    return set(re.findall(r"[\"'](--[a-z][a-z0-9-]*)[\"']", (ROOT / script).read_text()))


def check_text(text: str) -> list[str]:
    """Everything named in one Markdown text that does not exist, one line per problem."""
    problems = [f"path {p} does not exist" for p in _paths(text) if not _path_exists(p)]
    problems += [
        f"{name} cannot be imported or has no such attribute" for name in _modules(text) if not _resolves(name)
    ]
    every_flag = set().union(*cli().values()) | set().union(*OTHER_TOOLS.values())
    for line in _code(text):
        for segment in _segments(line):
            problems += _segment_problems(segment, every_flag)
    return problems


def _segment_problems(segment: str, every_flag: set[str]) -> list[str]:
    """One program's arguments: a ``tgdfer`` command's flags belong to that command, a benchmark's to its
    argparse, ``pipelines/extract.py``'s to ``extract``; any other flag must be some tgdfer command's."""
    flags = FLAG.findall(segment)
    command = COMMAND.search(segment)
    if command is not None:
        name = command.group(1)
        if name not in cli():
            return [f"`tgdfer {name}` is not a command of the CLI ({sorted(c for c in cli() if c)})"]
        after = FLAG.findall(segment[command.end() :])
        return [f"`tgdfer {name}` has no flag {f}" for f in after if f not in cli()[name]]
    script = re.search(r"(?<![\w/])(bench/\w+\.py|pipelines/extract\.py)", segment)
    if script is not None and (ROOT / script.group(1)).is_file():
        before, after = segment[: script.start()], FLAG.findall(segment[script.end() :])
        known = cli()["extract"] if script.group(1).startswith("pipelines/") else _bench_flags(script.group(1))
        return [f"{script.group(1)} has no flag {f}" for f in after if f not in known] + [
            f"no tgdfer command has the flag {f}" for f in FLAG.findall(before) if f not in every_flag
        ]
    return [f"no tgdfer command has the flag {f}" for f in flags if f not in every_flag]


def _paths(text: str) -> set[str]:
    found = set()
    for match in PATH.findall(text):
        path = match.rstrip(".,:;)")
        if path.rstrip("/") not in CHECKED_DIRS:
            found.add(path)
    return found


def _expand(path: str) -> list[str]:
    """``a/{b,c}.py`` -> ``a/b.py``, ``a/c.py``."""
    brace = re.search(r"\{([^{}]*)\}", path)
    if brace is None:
        return [path]
    return [x for alt in brace.group(1).split(",") for x in _expand(path[: brace.start()] + alt + path[brace.end() :])]


def _path_exists(path: str) -> bool:
    for one in _expand(path):
        pattern = re.sub(r"<[^<>]*>", "*", one)
        if "*" in pattern:
            if not any(ROOT.glob(pattern.rstrip("/"))):
                return False
        elif not (ROOT / one).exists():
            return False
    return True


def _modules(text: str) -> set[str]:
    return {m.rstrip(".") for m in MODULE.findall(text)}


def _resolves(name: str) -> bool:
    """``tgdfer.a.b.C.d``: the longest importable module prefix, then attributes."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_everything_named_exists(doc: Path):
    assert check_text(doc.read_text()) == []


def test_the_readme_layout_names_every_module():
    """README's Layout block lists every module and subpackage of tgdfer/ by its file or folder name."""
    text = (ROOT / "README.md").read_text()
    layout = text[text.index("\n## Layout\n") :]
    words = set(re.findall(r"[\w.]+", layout))
    modules = {p.stem for p in (ROOT / "tgdfer").rglob("*.py") if p.stem != "__init__"}
    folders = {p.name for p in (ROOT / "tgdfer").iterdir() if p.is_dir() and p.name != "__pycache__"}
    missing = {m for m in modules if m not in words and f"{m}.py" not in words} | (folders - words)
    assert missing == set()


def test_the_checks_fail_on_what_does_not_exist():
    """The checker itself: a missing path, module, attribute, command and flag are each reported."""
    text = (
        "`tgdfer/nowhere.py` `tgdfer.no_module` `tgdfer.api.no_name`\n"
        "```bash\ntgdfer no-command --x\ntgdfer train --no-such-flag\npython bench/train.py --no-such-flag\n```\n"
    )
    problems = check_text(text)
    assert len(problems) == 6, problems  # the command's own flag is not looked at
    assert check_text("```bash\ntgdfer train --features c.h5 --set model.window=8\n```\n`--people`") == []
