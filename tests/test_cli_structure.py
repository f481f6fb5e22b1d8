"""The command line's structure: no import circle among kvplan/cli's modules, options declared once, help
lists read from the registries, COLUMNS driving the CSV header and the README's column table."""

import ast
import csv
import io
import json
import re
from pathlib import Path

import pytest
import typer

import kvplan.cli
from kvplan.cli.options import DeploymentOptions, OutputFormat, deployment_options, output_options
from kvplan.dtypes import FORMATS
from kvplan.estimator import COLUMNS
from kvplan.hardware import GPU_ALIASES, GPUS
from kvplan.recast import KINDS as RECAST_KINDS
from kvplan.units import InputError

CLI = Path(kvplan.cli.__file__).parent
README = Path(__file__).parent.parent / "README.md"
COMMAND_MODULES = {"estimate", "planning", "profiling", "search"}


def cli_imports() -> dict[str, set[str]]:
    """module name (file stem) -> the kvplan/cli modules it imports, read from its source with ast."""
    modules = {path.stem: path for path in CLI.glob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1:  # from . import x / from .x import y
                    targets = [node.module] if node.module else [alias.name for alias in node.names]
                elif node.level == 0 and (node.module or "").startswith("kvplan.cli"):
                    parts = node.module.split(".")
                    targets = [parts[2]] if len(parts) > 2 else [alias.name for alias in node.names]
                else:
                    continue
                found |= {t.split(".")[0] for t in targets}
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[2] for a in node.names if a.name.startswith("kvplan.cli.")}
        graph[name] = {m if m in modules else "__init__" for m in found}
    return graph


def test_command_modules_import_no_sibling_command_module_and_nothing_circles():
    graph = cli_imports()
    assert COMMAND_MODULES | {"options", "__init__"} == set(graph)
    for name in COMMAND_MODULES:
        assert graph[name] <= {"options"}, (name, graph[name])
    assert graph["options"] == set()
    # A depth-first walk finds no module reachable from itself.
    def reaches(start, target, seen=()):
        return any(n == target or (n not in seen and reaches(n, target, seen + (n,))) for n in graph[start])

    assert not [name for name in graph if reaches(name, name)]


def test_a_shared_option_declared_again_fails_when_the_module_loads():
    with pytest.raises(TypeError, match="declares shared option"):
        @deployment_options()
        def command(options: DeploymentOptions, gpu: str = typer.Option("x", "--gpu")) -> None:
            pass
    with pytest.raises(TypeError, match="no shared option"):
        deployment_options(include=("model", "gpus_per_rack"))
    with pytest.raises(TypeError, match="no `options` parameter"):
        @output_options
        def listing(as_table: bool = False) -> None:
            pass


def test_the_decorator_hands_one_typed_object():
    seen = {}

    @deployment_options(include=("model", "gpu", "kv_dtype", "attention"), gpu="auto")
    def command(options: DeploymentOptions, context: str = typer.Option("4k", "--context")) -> None:
        seen.update(options=options, context=context)

    names = [p.name for p in __import__("inspect").signature(command).parameters.values()]
    assert names == ["model", "gpu", "context", "kv_dtype", "attention", "as_json", "as_csv"]
    command(model="m", gpu="auto", context="8k", kv_dtype="fp8", attention=["mla", "tpa"], as_json=True, as_csv=False)
    assert seen["options"] == DeploymentOptions(model="m", gpu="auto", kv_dtype="fp8", attention=("mla", "tpa"),
                                                output=OutputFormat(as_json=True))
    assert seen["context"] == "8k"
    with pytest.raises(InputError, match="not both"):
        OutputFormat(as_json=True, as_csv=True)


def test_estimator_arguments_parse_the_deployment():
    options = DeploymentOptions(model="llama-3.1-8b", gpus=4, pp=2, memory="80GiB", kv_dtype="bf16, fp8",
                                attention=("mla,tpa:k_rank=2,v_rank=2", "window:4096"), prefill_chunk="8k",
                                naive_attention=True, gpu_set=("usd_per_hour=1", "bf16_flops=9e14"),
                                usd_per_hour=2.5)
    assert options.estimator_arguments() == dict(
        model="llama-3.1-8b", gpu="h100-sxm", attention=["mla", "tpa:k_rank=2,v_rank=2", "window:4096"],
        kv_dtype=["bf16", "fp8"], gpus=4, pp=2, dp=1, ep=1, gpus_per_node=0, overlap=False, weight_dtype="auto",
        block_size=0, reserve="auto", flash=False, memory_utilization=0.9,
        hardware_profile=None, prefill_chunk=8192, usd_per_hour=2.5, bf16_flops="9e14", memory_bytes=80 * 2**30)


def test_a_named_option_wins_over_gpu_set(run_json):
    (row,) = run_json("estimate", "-m", "llama-3.1-8b", "--gpu-set", "usd_per_hour=1", "--usd-per-hour", "2.5")
    # decode $/Mtok is linear in the price: 2.5x the same row at $1/GPU-hour.
    (cheap,) = run_json("estimate", "-m", "llama-3.1-8b", "--usd-per-hour", "1")
    assert row["decode_usd_per_mtok"] == pytest.approx(2.5 * cheap["decode_usd_per_mtok"])


def _help(run_cli, command: str) -> str:
    code, out, _ = run_cli(command, "--help")
    assert code == 0
    return " ".join(word for word in out.split() if word.strip("│╭╮╰╯─"))  # rich's box drawn around wrapped help


@pytest.mark.parametrize("command", ["estimate", "budget", "cost"])
def test_help_lists_come_from_the_registries(run_cli, command):
    flat = _help(run_cli, command)
    for name in list(GPUS) + [f"{alias} = {name}" for alias, name in GPU_ALIASES.items()]:
        assert name in flat
    for kind in RECAST_KINDS:
        assert re.search(rf"\b{re.escape(kind)}\b", flat), kind
    assert f"KV cache format: {', '.join(FORMATS)};" in flat
    assert f"Weight format: {', '.join(FORMATS)}; auto:" in flat


def test_both_chunks_say_how_they_differ(run_cli):
    cost = _help(run_cli, "cost")
    assert "tokens per sequence (also --chunk)" in cost and "Not --prefill-chunk" in cost
    assert "Not cost's --chunk-per-sequence" in _help(run_cli, "estimate")


def test_columns_drive_the_csv_header_and_the_json_keys(run_cli, run_json):
    args = ("estimate", "-m", "mistral-7b-v0.1", "-c", "4k,64k", "-a", "native,mla")
    code, out, err = run_cli(*args, "--csv")
    assert code == 0, err
    header = next(csv.reader(io.StringIO(out)))
    assert header == list(COLUMNS)
    assert [list(row) for row in run_json(*args)] == [list(COLUMNS)] * 4


def test_readme_column_table_is_columns():
    text = README.read_text()
    start = text.index("| column | unit and meaning |")
    lines = text[start:].split("\n\n")[0].splitlines()[2:]
    rows = [re.fullmatch(r"\| `(\w+)` \| (.*) \|", line).groups() for line in lines]
    assert rows == list(COLUMNS.items())


@pytest.mark.parametrize("args", [
    ["models"],
    ["gpus"],
    ["budget", "-m", "llama-3.1-8b", "-a", "mla", "-c", "32k"],
    ["recommend", "-m", "llama-3.1-8b", "-c", "32k", "--top", "2"],
    ["cost", "-m", "llama-3.1-8b", "-c", "32k", "--points", "3"],
])
def test_every_command_gives_csv_with_the_json_rows(run_cli, run_json, args):
    rows = run_json(*args)
    code, out, err = run_cli(*args, "--csv")
    assert code == 0, err
    table = list(csv.DictReader(io.StringIO(out)))
    assert len(table) == len(rows) > 0
    for json_row, csv_row in zip(rows, table):
        assert {k: "" if v is None else str(v) for k, v in json_row.items()} == csv_row


def test_chunk_is_an_alias_of_chunk_per_sequence(run_json):
    args = ("cost", "-m", "llama-3.1-8b", "-c", "32k", "--points", "3")
    rows = run_json(*args, "--chunk-per-sequence", "2k")
    assert rows == run_json(*args, "--chunk", "2k")
    assert {r["chunk"] for r in rows} == {2048}
    assert rows != run_json(*args)  # the default, 8k, prices another chunk


def test_recommend_json_and_csv_take_every_option_the_table_the_top(run_cli, run_json):
    rows = run_json("recommend", "-m", "llama-3.1-8b", "-c", "32k", "--top", "2")
    code, out, _ = run_cli("recommend", "-m", "llama-3.1-8b", "-c", "32k", "--top", "2")
    assert code == 0
    shown = [line for line in out.splitlines() if re.match(r"│ +\d+ │", line)]
    assert len(rows) > 2 and len(shown) == 2
    assert json.loads(json.dumps(rows))[0]["rank"] == 1
