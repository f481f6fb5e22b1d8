"""What every command shares, declared once: the deployment options (`DeploymentOptions`), the output format,
and printing a library function's Report (`show`, `err`).

`deployment_options(...)` adds the shared typer options to a command's signature in place of its `options`
parameter and hands the command one typed DeploymentOptions; `output_options` does the same for --json and
--csv alone. A command naming a shared option twice, or lacking the `options` parameter, fails at import.
Help lists (GPUs, aliases, attention kinds, dtypes) are read from the registries that define them.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field, fields
from typing import Callable, List, Optional

import typer

from ..dtypes import FORMATS
from ..hardware import GPU_ALIASES, GPUS
from ..output import Column, Report, emit
from ..recast import recast_help
from ..units import InputError


def err(message: str) -> None:
    typer.echo(f"kvplan: {message}", err=True)


@dataclass(frozen=True)
class OutputFormat:
    """--json, --csv, or (neither) a table."""

    as_json: bool = False
    as_csv: bool = False

    def __post_init__(self) -> None:
        if self.as_json and self.as_csv:
            raise InputError("give --json or --csv, not both")


@dataclass(frozen=True)
class DeploymentOptions:
    """The deployment a command is about, as typed on the command line (sizes still text until parsed)."""

    model: str = ""
    gpu: str = "h100-sxm"
    gpus: int = 1
    pp: int = 1
    dp: int = 1
    ep: int = 1
    gpus_per_node: int = 0  # 0: the GPU preset's
    overlap: bool = False
    memory: Optional[str] = None  # replaces the GPU's memory, e.g. "80GiB"
    kv_dtype: str = "bf16"  # one format, or several comma-separated
    attention: tuple[str, ...] = ()  # --attention values as given (each may hold several comma-separated specs)
    weight_dtype: str = "auto"
    block_size: int = 0
    reserve: str = "auto"
    naive_attention: bool = False
    prefill_chunk: str = "8k"
    gpu_memory_utilization: float = 0.9
    hardware_profile: Optional[str] = None
    gpu_set: tuple[str, ...] = ()  # FIELD=VALUE overrides
    usd_per_hour: Optional[float] = None
    compute_efficiency: Optional[float] = None
    bandwidth_efficiency: Optional[float] = None
    output: OutputFormat = field(default_factory=OutputFormat)

    def kv_dtypes(self) -> list[str]:
        names = [k.strip() for k in self.kv_dtype.split(",") if k.strip()]
        if not names:
            raise InputError(f"--kv-dtype names no format: {self.kv_dtype!r}")
        return names

    def estimator_arguments(self) -> dict:
        """Keyword arguments of kvplan.api.estimators. Named options win over --gpu-set."""
        from ..hardware import parse_assignments
        from ..recast import split_specs
        from ..units import parse_bytes, parse_count, parse_tokens

        named = {k: getattr(self, k) for k in ("usd_per_hour", "compute_efficiency", "bandwidth_efficiency")
                 if getattr(self, k) is not None}
        if self.memory:
            named["memory_bytes"] = parse_bytes(self.memory, "--memory")
        chunk = str(self.prefill_chunk or "0")
        overrides = parse_assignments(list(self.gpu_set))
        node = overrides.pop("gpus_per_node", None)  # a GPU field and a deployment option: the option wins
        gpus_per_node = self.gpus_per_node or (parse_count(node, "--gpu-set gpus_per_node") if node else 0)
        return dict(model=self.model, gpu=self.gpu, attention=split_specs(self.attention) or None,
                    kv_dtype=self.kv_dtypes(), gpus=self.gpus, pp=self.pp, dp=self.dp, ep=self.ep,
                    gpus_per_node=gpus_per_node, overlap=self.overlap, weight_dtype=self.weight_dtype,
                    block_size=self.block_size,
                    reserve=self.reserve if self.reserve == "auto" else parse_bytes(self.reserve, "--reserve", minimum=0),
                    flash=not self.naive_attention, memory_utilization=self.gpu_memory_utilization,
                    hardware_profile=self.hardware_profile,
                    prefill_chunk=parse_tokens(chunk, "--prefill-chunk") if chunk != "0" else 0,
                    **{**overrides, **named})


def _gpu_help() -> str:
    aliases = ", ".join(f"{alias} = {name}" for alias, name in GPU_ALIASES.items())
    return f"GPU preset: {', '.join(GPUS)} (also {aliases}; see `kvplan gpus`), or 'auto' to detect it through NVML."


def _kv_dtype_help() -> str:
    unscaled = [name for name, fmt in FORMATS.items() if not fmt.group_size]
    return (f"KV cache format: {', '.join(FORMATS)}; comma-separate for several. `profile` and `recommend` take "
            f"one; the torch models of `profile` store those with no per-group scales ({', '.join(unscaled)}).")


# name -> (typer annotation, flags, help, other typer.Option arguments); defaults are DeploymentOptions'.
_DECLARED: dict[str, tuple] = {
    "model": (str, ("--model", "-m"), "Preset name (see `kvplan models`) or a local config.json file or folder.",
              {"metavar": "NAME|PATH"}),
    "gpu": (str, ("--gpu", "-g"), _gpu_help(), {"metavar": "NAME"}),
    "gpus": (int, ("--gpus",), "GPUs in all = tp x pp x dp; tensor parallelism over gpus / (pp x dp) (vLLM "
             "--tensor-parallel-size, SGLang --tp).", {"min": 1, "metavar": "N"}),
    "pp": (int, ("--pp",), "Pipeline-parallel stages (vLLM --pipeline-parallel-size).", {"min": 1, "metavar": "N"}),
    "dp": (int, ("--dp",), "Data-parallel attention ranks: each holds the attention weights and the cache of its "
           "own share of the --batch sequences (vLLM --data-parallel-size, SGLang --dp with "
           "--enable-dp-attention).", {"min": 1, "metavar": "N"}),
    "ep": (int, ("--ep",), "Expert parallelism: routed experts spread whole over ep GPUs, tokens dispatched to them "
           "(fp8) and combined back (bf16) per MoE layer; must divide tp x dp (vLLM --enable-expert-parallel, "
           "SGLang --ep). 1 = experts split over tp.", {"min": 1, "metavar": "N"}),
    "gpus_per_node": (int, ("--gpus-per-node",), "GPUs sharing the GPU link (NVLink domain); groups larger than "
                      "this talk over the network. 0 = the GPU preset's (8).", {"min": 0, "metavar": "N"}),
    "overlap": (bool, ("--overlap",), "Communication hidden behind compute (two micro-batches, as DeepSeek "
                "serves); without it the step pays both.", {}),
    "memory": (Optional[str], ("--memory",), "Memory per GPU replacing the preset's, e.g. 80GiB or 141GB "
               "(GiB = 2^30 bytes, GB = 10^9).", {"metavar": "SIZE"}),
    "kv_dtype": (str, ("--kv-dtype",), _kv_dtype_help(), {"metavar": "FORMAT"}),
    "attention": (Optional[List[str]], ("--attention", "-a"), f"Re-cast attention: KIND[:k=v,...] with "
                  f"KIND[:its options] one of {recast_help(option_separator=', ')} (e.g. tpa:k_rank=2,v_rank=2  "
                  f"gqa:kv_heads=4  window:4096). Any kind also takes window=W and global_every=N. Repeat or "
                  f"comma-separate for one row each.", {"metavar": "KIND[:k=v]"}),
    "weight_dtype": (str, ("--weight-dtype",), f"Weight format: {', '.join(FORMATS)}; auto: as the checkpoint "
                     f"stores them (quantization_config, safetensors headers), else bf16.", {"metavar": "FORMAT"}),
    "block_size": (int, ("--block-size",), "Paged KV cache block, tokens (vLLM uses 16); 0 = contiguous.",
                   {"min": 0, "metavar": "TOKENS"}),
    "reserve": (str, ("--reserve",), "Memory held back per GPU for the runtime, e.g. 1GiB (a bare number is bytes); "
                "'auto': the CUDA context (512 MiB) plus NCCL's buffers with several GPUs (342 MB on 2, 392 MB on 4+, "
                "aiconfigurator's figures).", {"metavar": "SIZE"}),
    "gpu_memory_utilization": (float, ("--gpu-memory-utilization",), "Fraction of each GPU's memory the engine may "
                               "use, as vLLM's --gpu-memory-utilization (default 0.9).",
                               {"min": 0.01, "max": 1.0, "metavar": "FRACTION"}),
    "naive_attention": (bool, ("--naive-attention",), "Attention materialises the score matrix (memory quadratic in "
                        "context).", {}),
    "prefill_chunk": (str, ("--prefill-chunk",), "Chunked prefill: tokens per prefill forward across the batch (e.g. "
                      "8k, vLLM's default max_num_batched_tokens, the default); bounds activation memory. 0 = whole "
                      "prompts at once. Not cost's --chunk-per-sequence (tokens per sequence of each priced prefill "
                      "chunk).", {"metavar": "TOKENS"}),
    "hardware_profile": (Optional[str], ("--hardware-profile",), "JSON file replacing datasheet figures: a `kvplan "
                         "calibrate` profile, or an object of GPU fields (memory_bytes, bandwidth_bytes_per_s, "
                         "bf16_flops and fp8_flops in FLOP/s, link_bytes_per_s, usd_per_hour, compute_efficiency, "
                         "bandwidth_efficiency). A GPU of a new name needs every figure but the efficiencies, "
                         "gpus_per_node and network_bytes_per_s, which default (with a warning).", {"metavar": "FILE"}),
    "gpu_set": (Optional[List[str]], ("--gpu-set",), "Override one GPU field, FIELD=VALUE (repeatable), e.g. "
                "memory_bytes=80GiB, bandwidth_bytes_per_s=3.0e12 (bytes/s), bf16_flops=800e12 (FLOP/s), "
                "usd_per_hour=2.5 ($).", {"metavar": "FIELD=VALUE"}),
    "usd_per_hour": (Optional[float], ("--usd-per-hour",), "Price of one GPU-hour in $ (default: the preset's).",
                     {"metavar": "USD"}),
    "compute_efficiency": (Optional[float], ("--compute-efficiency",), "Fraction of peak FLOP/s that every "
                           "operation reaches, replacing the GPU's per-operation figures (default: each operation's; "
                           "`kvplan gpus --json`).", {"metavar": "FRACTION"}),
    "bandwidth_efficiency": (Optional[float], ("--bandwidth-efficiency",), "Fraction of memory bandwidth that "
                             "every operation reaches, replacing the GPU's per-operation figures (default: each "
                             "operation's).", {"metavar": "FRACTION"}),
}
_OUTPUT: dict[str, tuple] = {
    "as_json": (bool, ("--json",), "Print a JSON list of flat objects, one per row.", {}),
    "as_csv": (bool, ("--csv",), "Print CSV with the same columns as --json.", {}),
}
ALL = tuple(_DECLARED)
_DEFAULTS = {f.name: f.default for f in fields(DeploymentOptions) if f.name != "output"}
_LISTS = {"attention", "gpu_set"}  # typer hands None or a list; DeploymentOptions holds a tuple


def _parameter(name: str, declared: tuple, default) -> inspect.Parameter:
    annotation, flags, help_text, extra = declared
    if name == "model":
        default = ...  # required
    elif name in _LISTS:
        default = None
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(default, *flags, help=help_text, **extra))


_LEADING = ("model", "gpu")  # listed first in --help; the other shared options follow the command's own


def _with_parameters(command: Callable, shared: list[inspect.Parameter], build: Callable[[dict], dict]) -> Callable:
    """`command` with its `options` parameter replaced by `shared`: --model and --gpu where `options` stood, the
    other deployment options after the command's own, --json/--csv last. The wrapper pops the shared values
    and calls command(**build(popped), **rest)."""
    signature = inspect.signature(command, eval_str=True)
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in signature.parameters.values()]
    names = [p.name for p in own]
    if "options" not in names:
        raise TypeError(f"{command.__name__} takes no `options` parameter to replace with the shared options")
    clash = set(names) & {p.name for p in shared}
    if clash:
        raise TypeError(f"{command.__name__} declares shared option(s) {', '.join(sorted(clash))} again")
    at = names.index("options")
    leading = [p for p in shared if p.name in _LEADING]
    rest = [p for p in shared if p.name not in _LEADING and p.name not in _OUTPUT]
    output = [p for p in shared if p.name in _OUTPUT]
    params = own[:at] + leading + own[at + 1:] + rest + output
    popped = {p.name for p in shared}

    @functools.wraps(command)
    def run(**values):
        chosen = {name: values.pop(name) for name in popped}
        return command(**build(chosen), **values)

    run.__signature__ = signature.replace(parameters=params, return_annotation=inspect.Signature.empty)
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run


def deployment_options(include: tuple[str, ...] = ALL, gpu: str = _DEFAULTS["gpu"], csv: bool = True) -> Callable:
    """Decorator: the shared options named in `include` (all by default) plus --json (and --csv), handed to the
    command as `options: DeploymentOptions`; `gpu` is the --gpu default (profile and calibrate detect: 'auto')."""
    unknown = set(include) - set(_DECLARED)
    if unknown:
        raise TypeError(f"no shared option(s) {', '.join(sorted(unknown))}; declared: {', '.join(_DECLARED)}")
    defaults = {**_DEFAULTS, "gpu": gpu}
    output = {k: v for k, v in _OUTPUT.items() if csv or k != "as_csv"}

    def build(chosen: dict) -> dict:
        out = OutputFormat(chosen.pop("as_json"), chosen.pop("as_csv", False))
        values = {k: tuple(v or ()) if k in _LISTS else v for k, v in chosen.items()}
        return {"options": DeploymentOptions(**{**defaults, **values}, output=out)}

    def decorate(command: Callable) -> Callable:
        shared = [_parameter(name, _DECLARED[name], defaults[name]) for name in include]
        shared += [_parameter(name, declared, False) for name, declared in output.items()]
        return _with_parameters(command, shared, build)

    return decorate


def output_options(command: Callable) -> Callable:
    """Decorator: --json and --csv, handed to the command as `options: OutputFormat`."""
    shared = [_parameter(name, declared, False) for name, declared in _OUTPUT.items()]
    return _with_parameters(command, shared, lambda chosen: {"options": OutputFormat(**chosen)})


def show(report: Report, output: OutputFormat, columns: list[Column], fields: list[str] | None = None) -> None:
    """Print a library function's Report: its messages on stderr, its rows as the format asks, its notes."""
    for message in report.messages:
        err(message)
    table = not (output.as_json or output.as_csv)
    rows = report.table_rows if table and report.table_rows is not None else report.rows
    emit(rows, output.as_json, output.as_csv, columns, report.title, report.caption, fields)
    if table:
        for note in report.notes:
            typer.echo(note)
