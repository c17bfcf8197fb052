"""The README and docs/*.md stay true: short front door, commands that exist, links that resolve.

Every shell command in a ```bash/sh block is checked against the project: a `make X` target must be in
the Makefile, `python -m X` (also under `accelerate launch`) an importable module, `python X.py` a file,
`steve1 X --opt` a CLI subcommand with that option, `dvc repro X` a stage of dvc.yaml, `dvc exp run -S
key=value` a params key. Every relative
link must name an existing file and, for a markdown target, an existing heading anchor.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_MAX_LINES = 350

SHELL_LANGS = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^\s*```+\s*([\w+-]*)")
LINK = re.compile(r"(?<!!)\[([^\]]*)\]\(([^)\s]+)\)")
REDIRECTS = {">", ">>", "<", ">&", "&>"}


# ----------------------------------------------------------------------------------------------- parsing

def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    blocks, lang, body = [], None, []
    for line in text.splitlines():
        m = FENCE.match(line)
        if m and lang is None:
            lang, body = m.group(1).lower(), []
        elif m:
            blocks.append((lang, "\n".join(body)))
            lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def prose(text: str) -> str:
    """The text outside fenced blocks and inline code spans."""
    out, inside = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            out.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def shell_commands(text: str) -> list[list[str]]:
    """Each simple command of the page's shell blocks as its words (comments, env assignments and
    operators removed; backslash-continued lines joined)."""
    commands = []
    for lang, body in code_blocks(text):
        if lang not in SHELL_LANGS:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            lexer.commenters = "#"
            words: list[str] = []
            redirect = False
            for token in [*lexer, ";"]:
                if redirect:                                  # a redirection's file is no command word
                    redirect = False
                    continue
                if token in REDIRECTS:
                    redirect = True
                    continue
                if set(token) <= set("&|;"):
                    while words and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
                        words.pop(0)
                    if words:
                        commands.append(words)
                    words = []
                else:
                    words.append(token)
    return commands


def makefile_targets() -> set[str]:
    targets = set()
    for line in (REPO / "Makefile").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-/$()]+(?:\s+[A-Za-z0-9_.\-/$()]+)*)\s*:(?![=])", line)
        if m and not line.startswith((".", "\t")):
            targets.update(m.group(1).split())
    return targets


def cli_commands() -> dict[str, set[str]]:
    """steve1 subcommand -> its option names."""
    import typer.main

    from steve1.cli import app

    group = typer.main.get_command(app)
    return {name: {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)} | {"--help"}
            for name, cmd in group.commands.items()}


def dvc_stages() -> set[str]:
    return set(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])


@functools.lru_cache(maxsize=1)
def params_keys() -> set[str]:
    """Every dotted key of the params schema, sections included (``-S train.freeze=...``)."""
    from steve1.params import Params

    def walk(model, prefix=""):
        for name, field in model.model_fields.items():
            yield prefix + name
            if isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields"):
                yield from walk(field.annotation, f"{prefix}{name}.")

    return set(walk(Params))


def module_exists(name: str) -> bool:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def command_problems(words: list[str], targets: set[str], cli: dict[str, set[str]],
                     stages: set[str]) -> list[str]:
    """What in one command does not exist in the project (empty when it all does)."""
    problems, head = [], Path(words[0]).name
    shown = " ".join(words)
    if head == "make":
        for word in words[1:]:
            if not word.startswith("-") and "=" not in word and word not in targets:
                problems.append(f"`{shown}`: no Makefile target {word!r}")
    elif head in {"python", "python3", "accelerate"}:
        if "-m" in words:
            module = words[words.index("-m") + 1]
            if not module_exists(module):
                problems.append(f"`{shown}`: no module {module!r}")
        elif head != "accelerate" and len(words) > 1 and words[1].endswith(".py"):
            if not (REPO / words[1]).is_file():
                problems.append(f"`{shown}`: no file {words[1]!r}")
    elif head == "steve1" and len(words) > 1 and not words[1].startswith("-"):
        sub = words[1]
        if sub not in cli:
            problems.append(f"`{shown}`: no steve1 subcommand {sub!r}")
        else:
            for word in words[2:]:
                option = word.split("=", 1)[0]
                if option.startswith("--") and option not in cli[sub]:
                    problems.append(f"`{shown}`: steve1 {sub} has no option {option!r}")
    elif head == "dvc" and words[1:3] == ["exp", "run"]:
        for flag, value in zip(words, words[1:]):
            if flag in {"-S", "--set-param"} and value.split("=", 1)[0] not in params_keys():
                problems.append(f"`{shown}`: no params key {value.split('=', 1)[0]!r}")
    elif head == "dvc" and words[1:2] == ["repro"]:
        for word in words[2:]:
            if not word.startswith("-") and word.split("@")[0] not in stages:
                problems.append(f"`{shown}`: no dvc stage {word!r}")
    return problems


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]{2,}|`", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, seen = set(), {}
    inside = False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            inside = not inside
            continue
        m = None if inside else re.match(r"^#{1,6}\s+(.+?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def link_problems(page: Path) -> list[str]:
    problems = []
    for _, target in LINK.findall(prose(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):          # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        where = f"{page.relative_to(REPO)}: link {target!r}"
        if not dest.exists():
            problems.append(f"{where}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: no heading with anchor #{anchor} in {dest.relative_to(REPO)}")
    return problems


# ----------------------------------------------------------------------------------------------- the tests

def test_readme_is_a_short_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; keep it <= {README_MAX_LINES}"
    text = README.read_text()
    assert "source .venv/bin/activate" in text            # how dvc and steve1 get on PATH
    assert "docs/params.md" in text                        # the params reference is linked, not copied
    assert "params-table:begin" not in text


def test_readme_shows_commands_and_each_one_exists():
    commands = shell_commands(README.read_text())
    heads = {Path(c[0]).name for c in commands}
    assert {"make", "steve1", "dvc"} <= heads, heads
    targets, cli, stages = makefile_targets(), cli_commands(), dvc_stages()
    problems = [p for c in commands for p in command_problems(c, targets, cli, stages)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_commands_in_docs_exist(page):
    targets, cli, stages = makefile_targets(), cli_commands(), dvc_stages()
    problems = [p for c in shell_commands(page.read_text()) for p in command_problems(c, targets, cli, stages)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", [*PAGES, REPO / "docker" / "README.md"], ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    problems = link_problems(page)
    assert not problems, "\n".join(problems)


def test_every_doc_is_reachable_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve()
              for _, t in LINK.findall(prose(README.read_text())) if not re.match(r"^[a-z]+:", t)}
    missing = [p.name for p in DOCS if p.resolve() not in linked]
    assert not missing, f"docs not linked from README.md: {missing}"


# ----------------------------------------------------------------------------------------------- the checkers catch what they should

def test_command_parser_splits_operators_comments_and_assignments():
    text = ("```bash\n"
            "make repro   # runs it\n"
            "FOO=1 BAR=2 python -m steve1.params_doc --check > /tmp/x && steve1 compare --sort val_loss\n"
            "accelerate launch --num_processes 8 \\\n  -m stages.train\n"
            "```\n```yaml\nmake: not-a-command\n```\n")
    assert shell_commands(text) == [
        ["make", "repro"], ["python", "-m", "steve1.params_doc", "--check"],
        ["steve1", "compare", "--sort", "val_loss"],
        ["accelerate", "launch", "--num_processes", "8", "-m", "stages.train"]]


def test_command_checker_reports_what_does_not_exist():
    targets, cli, stages = makefile_targets(), cli_commands(), dvc_stages()
    assert "repro" in targets and "test" in targets and "compare" in cli and "train" in stages

    def check(words):
        return command_problems(words, targets, cli, stages)

    assert check(["make", "repro", "NPROC=8"]) == [] and check(["steve1", "compare", "--sort", "x"]) == []
    assert check(["python", "-m", "steve1.params_doc"]) == [] and check(["dvc", "repro", "-f", "decode"]) == []
    assert "no Makefile target 'reproduce'" in check(["make", "reproduce"])[0]
    assert "no module 'steve1.nothing_here'" in check(["python", "-m", "steve1.nothing_here"])[0]
    assert "no module 'stages.nope'" in check(["accelerate", "launch", "-m", "stages.nope"])[0]
    assert "no file 'assets/none.py'" in check(["python", "assets/none.py"])[0]
    assert "no steve1 subcommand 'comparez'" in check(["steve1", "comparez"])[0]
    assert "has no option '--sorted'" in check(["steve1", "compare", "--sorted", "x"])[0]
    assert "no dvc stage 'decoder'" in check(["dvc", "repro", "decoder"])[0]
    assert check(["dvc", "exp", "run", "-S", "train.freeze=[cnn]", "-S", "learning_rate=1.0e-5"]) == []
    assert "no params key 'train.frozen'" in check(["dvc", "exp", "run", "-S", "train.frozen=[cnn]"])[0]


def test_slugs_follow_github():
    assert slug("Frame storage (`decode.frame_codec`)") == "frame-storage-decodeframe_codec"
    assert slug("How `dvc.yaml` is made") == "how-dvcyaml-is-made"
    assert slug("Before/after, per dataset") == "beforeafter-per-dataset"
    assert slug("Real data, official weights: the paper and fine-tune profiles") == \
        "real-data-official-weights-the-paper-and-fine-tune-profiles"


def test_link_checker_reports_missing_files_and_anchors(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\n## Some part\n\n```\n## not a heading\n```\n")
    page = tmp_path / "README.md"
    page.write_text("[ok](docs/a.md#some-part) [web](https://example.org/x) `[code](nowhere.md)`\n"
                    "[gone](docs/b.md) [bad anchor](docs/a.md#not-a-heading) [self](#a-title)\n\n# A title\n")
    problems = link_problems(page)
    assert len(problems) == 2, problems
    assert "'docs/b.md'" in problems[0] and "no file" in problems[0]
    assert "#not-a-heading" in problems[1]
