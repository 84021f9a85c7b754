"""Every example in README.md and docs/ runs: command lines parse with the real parsers, Python blocks execute."""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)
INLINE = re.compile(r"`(vs_[a-z_]+ [^`]*)`")
INLINE_PAGES = {"coming_from_nnunet.md"}  # elsewhere inline code names a flag (`vs_train --continue`), not a command
# Python blocks that run for real (seconds to a minute on 2 cores); others are only compiled.
EXECUTED = {"python_api.md", "planning.md", "training.md"}


def _blocks(kind: str) -> list[tuple[str, str]]:
    return [(page.name, body) for page in PAGES for lang, body in FENCE.findall(page.read_text(encoding="utf-8")) if lang == kind]


def _entry_points() -> dict[str, str]:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    return {name: target for name, target in scripts.items()}


def _command_lines() -> list[tuple[str, list[str]]]:
    """``(page, argv)`` of every vs_* command in bash blocks and inline code (comments, env prefixes, torchrun dropped)."""
    lines = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        bodies = [body.replace("\\\n", " ") for lang, body in FENCE.findall(text) if lang in ("bash", "")]
        candidates = [line for body in bodies for line in body.splitlines() if re.search(r"(^|\s|\()vs_[a-z_]+", line)]
        candidates += INLINE.findall(text) if page.name in INLINE_PAGES else []
        # a synopsis with [optional] parts is a usage line, not an example
        candidates = [line for line in candidates if " [" not in line]
        for line in candidates:
            words = shlex.split(line, comments=True)
            for chain in " ".join(words).split(" && "):
                argv = shlex.split(chain)
                while argv and ("=" in argv[0] or argv[0] in ("torchrun", "$(which") or argv[0].startswith("--nproc")):
                    argv = argv[1:] if argv[0] != "$(which" else [argv[1].rstrip(")"), *argv[2:]]
                    if argv and argv[0].isdigit():  # torchrun's --nproc_per_node value
                        argv = argv[1:]
                if argv and argv[0].startswith("vs_"):
                    lines.append((page.name, argv))
    return lines


def _parser(command: str):
    module_name, function = _entry_points()[command].split(":")
    module = importlib.import_module(module_name)
    builder = {"export_main": "build_export_parser", "import_main": "build_import_parser"}.get(function, "build_parser")
    return getattr(module, builder)()


COMMANDS = _command_lines()


def test_the_pages_hold_examples_of_every_command():
    used = {argv[0] for _, argv in COMMANDS}
    assert set(_entry_points()) <= used, f"commands without an example: {set(_entry_points()) - used}"
    assert len(_blocks("python")) >= 3


@pytest.mark.parametrize(("page", "argv"), COMMANDS, ids=[f"{p}:{' '.join(a)[:60]}" for p, a in COMMANDS])
def test_command_line_examples_parse(page, argv):
    parser = _parser(argv[0])
    try:
        parser.parse_args(argv[1:])
    except SystemExit as exc:  # argparse's way of refusing
        pytest.fail(f"{page}: `{' '.join(argv)}` does not parse (exit {exc.code})")


@pytest.mark.parametrize(("page", "code"), _blocks("python"), ids=[p for p, _ in _blocks("python")])
def test_python_examples_run(page, code, tmp_path):
    compile(code, page, "exec")
    if page not in EXECUTED:
        return
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "2", "PYTHONIOENCODING": "utf-8"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{page} example failed:\n{done.stderr[-3000:]}"
