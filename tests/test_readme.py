"""Every `$ kvplan ...` output shown in README.md is what the command prints (examples/readme_outputs.py)."""

import importlib.util
import tempfile
from pathlib import Path

TOOL = Path(__file__).parents[1] / "examples" / "readme_outputs.py"


def test_readme_outputs_are_what_the_commands_print():
    spec = importlib.util.spec_from_file_location("readme_outputs", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    text = tool.README.read_text()
    with tempfile.TemporaryDirectory() as folder:
        assert tool.regenerate(text, folder) == text, "run python3 examples/readme_outputs.py --write"
