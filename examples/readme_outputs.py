"""Run every `$ kvplan ...` command shown in README.md and compare (or rewrite) the output printed under it.

    python3 examples/readme_outputs.py            # exit 1 and a diff when an output differs
    python3 examples/readme_outputs.py --write    # rewrite the outputs in README.md

Commands run as `python -m kvplan ...` with stderr folded into stdout, as a terminal shows them, at a terminal
width wide enough that no table wraps (COLUMNS=400; lines are compared without trailing spaces). An output
that ends in a line `...` in the README is compared up to that line. `--plot FILE` writes into a temporary
folder unless --write is given, so checking never touches the committed figures.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```console\n(.*?)^```$", re.S | re.M)


def run(command: str, plot_folder: str | None) -> list[str]:
    """The lines `command` (a `kvplan ...` line) prints, trailing spaces removed."""
    args = shlex.split(command)[1:]
    if plot_folder and "--plot" in args:
        where = args.index("--plot") + 1
        args[where] = str(Path(plot_folder) / Path(args[where]).name)
    env = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1", "TERM": "dumb", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", "kvplan", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=env, cwd=README.parent)
    shown = shlex.split(command)[1:]
    lines = done.stdout.splitlines()
    if plot_folder and "--plot" in args:  # say the README's path, not the temporary one
        lines = [line.replace(args[args.index("--plot") + 1], shown[shown.index("--plot") + 1]) for line in lines]
    return [line.rstrip() for line in lines]


def regenerate(text: str, plot_folder: str | None) -> str:
    """README text with the output of every console command replaced by what it prints now."""

    def block(match: re.Match) -> str:
        lines = match.group(1).splitlines()
        out, i = [], 0
        while i < len(lines):
            line = lines[i]
            i += 1
            if not line.startswith("$ kvplan"):
                out.append(line)
                continue
            shown = []
            while i < len(lines) and not lines[i].startswith("$ "):
                shown.append(lines[i])
                i += 1
            printed = run(line[2:], plot_folder)
            if shown and shown[-1] == "...":
                printed = printed[:len(shown) - 1] + ["..."]
            out += [line, *printed]
        return "```console\n" + "\n".join(out) + "\n```"

    return BLOCK.sub(block, text)


def main() -> int:
    write = "--write" in sys.argv[1:]
    text = README.read_text()
    with tempfile.TemporaryDirectory() as folder:
        new = regenerate(text, None if write else folder)
    if write:
        README.write_text(new)
        print(f"rewrote the command outputs in {README}")
        return 0
    if new == text:
        print("README outputs are what the commands print")
        return 0
    sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True), "README.md", "commands"))
    return 1


if __name__ == "__main__":
    sys.exit(main())
