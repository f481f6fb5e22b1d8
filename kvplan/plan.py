"""The cheapest deployment that meets latency targets: candidate grid -> feasible rows -> ranked.

The grid: GPU type x GPU count (1, 2, 4, ... up to a node, then whole nodes, up to max_gpus) x layout
(tp x pp x dp = the count; tp splits the attention as its kind requires; ep 1, or tp x dp dividing the routed
experts; see `layouts`) x kv dtype x weight dtype x attention (re-casts) x serving x batch. Batches: 1, then
each dp rank holding 1, 2, ... max_batch sequences (dp, 2 dp, ...). Each deployment and pool is one Estimator,
and one Estimator.row over all its batches at once (a numpy array of batches, which kvplan.units' helpers let
the formulas take): the formulas are Estimator's own.

A workload is `isl` prompt tokens (`cached` of them from a prefix cache) and `osl` generated tokens per
request. Every figure reads an Estimator.row at prompt isl and context isl + osl // 2: a sequence halfway
through its output, the average of a steady stream of requests; it sets the cache in memory and the keys a
decode step reads. Per serving mode, with B sequences in flight:
- aggregated (one pool prefills and decodes, chunked prefill interleaving prompts with decode steps): each
  step of the batch also carries the prompt chunks of the B / osl requests that join per step, so
      TPOT = decode_seconds_per_token(B) + prefill_seconds(B) / osl
  and TTFT = prefill_seconds(1): one request's prompt alone on the pool (no queueing; an engine whose chunk
  budget is smaller than the prompt spreads it over several steps and delivers the first token later).
- disaggregated (a prefill pool and a decode pool of one GPU type, kv dtype, weight dtype and attention):
  the prefill pool (role "prefill") prefills Bp prompts together, TTFT = prefill_seconds(Bp) + the prompt's
  cache crossing the network (kvplan.disaggregated.kv_transfer_seconds); the decode pool (role "decode")
  decodes Bd sequences, TPOT = decode_seconds_per_token(Bd). The pools are sized so that prompts prefilled
  per second equal requests decoded per second (each pool's GPUs in proportion to its GPU-seconds).
A candidate is feasible when it fits in memory (Estimator's `fits`) and meets both targets.

Per request a pool spends gpus x (its seconds per batch) / batch GPU-seconds (aggregated: TPOT x osl per
batch; prefill pool: prefill_seconds(Bp); decode pool: TPOT x osl). From GPU-seconds per request G:
  usd_per_mtok (output tokens) = G x $/GPU-second / osl x 1e6, tokens_per_second_per_gpu = osl / G,
  tokens_per_second_per_user = 1 / TPOT, and for `rate` requests/s each pool needs ceil(rate x G / gpus)
  copies of its deployment.
Objectives: usd_per_mtok (lowest), tokens_per_second_per_gpu (highest), gpus (fewest for `rate`; ties by
cost). Each deployment is ranked at its best batch.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Sequence

from .dtypes import storage_format, weight_storage
from .disaggregated import kv_transfer_seconds
from .estimator import Deployment, Estimator
from .hardware import GPU, get_gpu
from .model import Model
from .presets import load_model
from .recast import recast, split_specs
from .units import InputError, format_gib, parse_seconds, parse_tokens

if TYPE_CHECKING:
    import numpy as np  # imported where used, so that importing kvplan leaves numpy out (the estimate path)

OBJECTIVES = {
    "usd_per_mtok": "lowest $ per million output tokens",
    "tokens_per_second_per_gpu": "most output tokens/s per GPU",
    "gpus": "fewest GPUs to serve `rate` requests/s",
}
DEFAULT_GPUS = ("a100-80gb", "h100-sxm", "h200", "b200", "mi300x")
DEFAULT_MAX_BATCH = 1024  # sequences per data-parallel rank


@dataclass(frozen=True)
class Workload:
    """What every request is, and what it must get."""

    isl: int  # prompt tokens per request
    osl: int  # generated tokens per request
    ttft_seconds: float  # time to first token, at most
    tpot_seconds: float  # time per output token after the first, at most
    cached: int = 0  # prompt tokens found in a prefix cache (held in the cache, not recomputed)

    @property
    def context(self) -> int:
        """Tokens a decoding sequence holds on average: halfway through its output."""
        return self.isl + self.osl // 2


@dataclass(frozen=True)
class Option:
    """One pool's deployment at one batch that meets its targets, with its figures."""

    estimator: Estimator
    batch: int
    ttft_seconds: float  # 0 for a decode pool
    tpot_seconds: float  # 0 for a prefill pool
    gpu_seconds: float  # GPU-seconds per request

    @property
    def role(self) -> str:
        return self.estimator.deployment.role

    @property
    def gpus(self) -> int:
        return self.estimator.deployment.gpus

    def copies(self, rate: float) -> int:
        """Copies of this deployment that serve `rate` requests/s."""
        return math.ceil(rate * self.gpu_seconds / self.gpus)


@dataclass
class Plan:
    """The search's answer: ranked rows (one per pool of each plan), the Pareto fronts, and what it covered."""

    rows: list[dict]
    fronts: dict[str, tuple[np.ndarray, np.ndarray]]  # label -> (tokens/s per user, tokens/s per GPU), x ascending
    workload: Workload
    objective: str
    candidates: int  # (deployment, pool, batch) combinations in the grid
    rows_computed: int  # of which Estimator computed (the others' weights alone exceed the GPU's memory)


# --- the grid ----------------------------------------------------------------------------------------------
def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def gpu_counts(max_gpus: int, gpus_per_node: int) -> list[int]:
    """1, 2, 4, ... up to one node, then whole nodes, up to max_gpus."""
    within = [2**i for i in range(gpus_per_node.bit_length()) if 2**i < gpus_per_node]
    return [n for n in within + list(range(gpus_per_node, max_gpus + 1, gpus_per_node)) if n <= max_gpus]


def layouts(model: Model, gpus: int) -> list[tuple[int, int, int, int]]:
    """(tp, pp, dp, ep) with tp x pp x dp = gpus that engines run: the attention splits over tp (its kind's
    check_shardable), pp stages have layers, and ep is 1 or tp x dp (vLLM's --enable-expert-parallel, SGLang's
    --ep with --enable-dp-attention) dividing the routed experts. dp > 1 only with ep > 1: otherwise the dp
    ranks are independent replicas, the copies that the `gpus` objective counts, at the same cost per token."""
    experts = model.ffn.n_experts if model.ffn.is_moe else 0
    found = []
    for tp in divisors(gpus):
        if model.attention.check_shardable(tp):
            continue
        for pp in divisors(gpus // tp):
            dp = gpus // (tp * pp)
            if pp > model.n_layers:
                continue
            if dp == 1:
                found.append((tp, pp, 1, 1))
            if tp * dp > 1 and experts and experts % (tp * dp) == 0:
                found.append((tp, pp, dp, tp * dp))
    return found


def batch_grid(dp: int, max_batch: int) -> np.ndarray:
    """Sequences in flight: 1, then dp x 1..max_batch (float64: whole numbers, never wrapping around)."""
    import numpy as np

    return np.unique(np.concatenate(([1.0], dp * np.arange(1, max_batch + 1, dtype=np.float64))))


# --- one pool's figures --------------------------------------------------------------------------------------
def latencies(role: str, row: dict, workload: Workload, transfer_seconds: float, alone_seconds):
    """(TTFT, TPOT, seconds the pool spends per batch) from an Estimator.row (arrays or numbers) of `role`;
    `alone_seconds` is prefill_seconds of one request (the aggregated TTFT)."""
    if role == "prefill":
        return row["prefill_seconds"] + transfer_seconds, 0.0, row["prefill_seconds"]
    decode = row["decode_seconds_per_token"]
    if role == "decode":
        return 0.0, decode, decode * workload.osl
    tpot = decode + row["prefill_seconds"] / workload.osl
    return alone_seconds, tpot, tpot * workload.osl


def pool_row(estimator: Estimator, batch, workload: Workload) -> dict:
    """Estimator.row where this pool serves: a prefill pool at the prompt, the others at the average context."""
    context = workload.isl if estimator.deployment.role == "prefill" else workload.context
    return estimator.row(batch, context, workload.isl, workload.cached)


# --- the search ----------------------------------------------------------------------------------------------
@dataclass
class _Search:
    """What the loop over deployments accumulates."""

    workload: Workload
    objective: str
    rate: float | None
    front_by: str
    several_models: bool
    aggregated: list[Option] = field(default_factory=list)
    prefill: dict[tuple, list[Option]] = field(default_factory=dict)  # group -> options
    decode: dict[tuple, list[Option]] = field(default_factory=dict)
    points: dict[str, list] = field(default_factory=dict)  # front label -> [(x, y) arrays]
    decode_points: dict[tuple, list] = field(default_factory=dict)  # group -> [(label, x, decode GPU-s) arrays]
    nearest: dict = field(default_factory=dict)  # (role, group) -> (miss ratio, estimator, batch, ttft, tpot)
    least_memory: tuple = (math.inf, None)  # (bytes per GPU / memory, estimator) when nothing fits
    candidates: int = 0
    rows_computed: int = 0

    def weights_fit(self, estimator: Estimator, candidates: int) -> bool:
        """Whether the weights alone fit on a GPU; if not, the `candidates` that share them are all rejected."""
        need = estimator.weights_bytes_per_gpu / estimator.deployment.usable_memory_bytes
        if need <= 1:
            return True
        self.candidates += candidates
        self.least_memory = min(self.least_memory, (need, estimator), key=lambda pair: pair[0])
        return False

    def add(self, estimator: Estimator, batches: np.ndarray) -> None:
        import numpy as np

        w, dep = self.workload, estimator.deployment
        self.candidates += len(batches)
        self.rows_computed += len(batches)
        row = pool_row(estimator, batches, w)
        transfer = kv_transfer_seconds(estimator, w.isl) if dep.role == "prefill" else 0.0
        ttft, tpot, busy = latencies(dep.role, row, w, transfer, row["prefill_seconds"][0])
        ttft, tpot = np.broadcast_to(ttft, batches.shape), np.broadcast_to(tpot, batches.shape)
        fits = row["fits"]
        if not fits[0]:
            share = row["total_bytes_per_gpu"][0] / dep.usable_memory_bytes
            self.least_memory = min(self.least_memory, (share, estimator), key=lambda pair: pair[0])
            return
        gpu_seconds = dep.gpus * busy / batches
        miss = np.maximum(ttft / w.ttft_seconds, tpot / w.tpot_seconds)
        group = (estimator.model.name, dep.gpu.name, dep.kv_format.name, estimator.weights_format.name)
        self._track_nearest(dep.role, group, np.where(fits, miss, np.inf), estimator, batches, ttft, tpot)
        # The fronts: every batch that fits and meets TTFT, whatever its TPOT (the x axis).
        shown = fits & (ttft <= w.ttft_seconds)
        label = self._label(estimator)
        if dep.role == "both":
            self.points.setdefault(label, []).append((1 / tpot[shown], w.osl / gpu_seconds[shown]))
        elif dep.role == "decode":
            self.decode_points.setdefault(group, []).append((label, 1 / tpot[shown], gpu_seconds[shown]))
        feasible = fits & (miss <= 1)
        if not feasible.any():
            return
        index = self._best(feasible, gpu_seconds, dep.gpus)
        option = Option(estimator, int(batches[index]), float(ttft[index]), float(tpot[index]),
                        float(gpu_seconds[index]))
        if dep.role == "both":
            self.aggregated.append(option)
        else:
            (self.prefill if dep.role == "prefill" else self.decode).setdefault(group, []).append(option)

    def _label(self, estimator: Estimator) -> str:
        """The Pareto front a candidate belongs to: its GPU or its attention (and its model, with several)."""
        kind = estimator.deployment.gpu.name if self.front_by == "gpu" else estimator.model.kind_label
        return f"{estimator.model.name}, {kind}" if self.several_models else kind

    def _best(self, feasible: np.ndarray, gpu_seconds: np.ndarray, gpus: int) -> int:
        """Index of the feasible batch that serves the objective best."""
        import numpy as np

        cost = np.where(feasible, gpu_seconds, np.inf)
        if self.objective != "gpus":
            return int(np.argmin(cost))
        needed = np.where(feasible, np.ceil(self.rate * gpu_seconds / gpus), np.inf)
        return int(np.lexsort((cost, needed))[0])

    def _track_nearest(self, role, group, miss, estimator, batches, ttft, tpot) -> None:
        index = int(miss.argmin())
        key = (role, group if role != "both" else None)
        if miss[index] < self.nearest.get(key, (math.inf,))[0]:
            self.nearest[key] = (float(miss[index]), estimator, int(batches[index]), float(ttft[index]),
                                 float(tpot[index]))


def _plans(search: _Search, top: int) -> list[tuple[Option, ...]]:
    """Every aggregated option, and per group the pairs of its `top` best prefill and decode pools (a pair's
    value is the sum of its pools', so the `top` best pairs are among them)."""
    plans = [(option,) for option in search.aggregated]
    for group, prefills in search.prefill.items():
        decodes = search.decode.get(group, [])
        best_prefill = sorted(prefills, key=lambda o: _pool_value(search, o))[:top]
        best_decode = sorted(decodes, key=lambda o: _pool_value(search, o))[:top]
        plans += [(p, d) for p in best_prefill for d in best_decode]
    return plans


def _pool_value(search: _Search, option: Option) -> tuple:
    if search.objective == "gpus":
        return option.copies(search.rate) * option.gpus, option.gpu_seconds
    return (option.gpu_seconds,)


def plan_figures(plan: tuple[Option, ...], workload: Workload, rate: float | None) -> dict:
    """The whole plan's figures (both pools together when disaggregated)."""
    gpu_seconds = sum(o.gpu_seconds for o in plan)
    usd_per_gpu_second = plan[0].estimator.deployment.gpu.usd_per_hour / 3600
    first, decode = plan[0], plan[-1]
    return {
        "serving": "aggregated" if len(plan) == 1 else "disaggregated",
        "usd_per_mtok": usd_per_gpu_second * gpu_seconds / workload.osl * 1e6,
        "ttft_seconds": first.ttft_seconds,
        "tpot_seconds": decode.tpot_seconds,
        "tokens_per_second_per_gpu": workload.osl / gpu_seconds,
        "tokens_per_second_per_user": 1 / decode.tpot_seconds,
        "gpus_per_unit": sum(o.gpus for o in plan),
        # GPUs of each pool per request/s in proportion: prompts prefilled per second = requests decoded.
        "prefill_gpus_per_decode_gpu": first.gpu_seconds / decode.gpu_seconds if len(plan) == 2 else None,
        "gpus_for_rate": sum(o.copies(rate) * o.gpus for o in plan) if rate else None,
    }


def _rank_key(objective: str, figures: dict) -> tuple:
    if objective == "tokens_per_second_per_gpu":
        return -figures["tokens_per_second_per_gpu"], figures["gpus_per_unit"]
    if objective == "gpus":
        return figures["gpus_for_rate"], figures["usd_per_mtok"], figures["gpus_per_unit"]
    return figures["usd_per_mtok"], figures["gpus_per_unit"]


def _describe(estimator: Estimator, batch: int) -> str:
    dep = estimator.deployment
    layout = ", ".join(f"{name} {value}" for name, value in
                       (("tp", dep.tp), ("pp", dep.pp), ("dp", dep.dp), ("ep", dep.ep)) if value > 1)
    serving = {"both": "aggregated", "prefill": "prefill pool", "decode": "decode pool"}[dep.role]
    weights = "" if estimator.weights_format.name == "bf16" else f", {estimator.weights_format.name} weights"
    return (f"{dep.gpus}x {dep.gpu.name} ({layout + ', ' if layout else ''}kv {dep.kv_format.name}{weights}, "
            f"batch {batch}, {serving})")


def _seconds(value: float) -> str:
    return f"{value * 1e3:.3g} ms" if value < 1 else f"{value:.3g} s"


def nearest_miss(search: _Search) -> str:
    """One line naming the candidate closest to the targets, and the figure(s) that miss them."""
    w = search.workload
    targets = f"TTFT {_seconds(w.ttft_seconds)} and TPOT {_seconds(w.tpot_seconds)}"
    if not search.nearest:
        share, estimator = search.least_memory
        if estimator is None:
            return f"no candidate to search for {targets}"
        return (f"no candidate fits in memory: the least needs {share:.2f}x the GPU's memory "
                f"({format_gib(share * estimator.deployment.gpu.memory_bytes)} of "
                f"{format_gib(estimator.deployment.gpu.memory_bytes)} GiB) on {_describe(estimator, 1)}; "
                f"allow more GPUs or smaller dtypes")
    candidates = [(v[0], [v]) for (role, _), v in search.nearest.items() if role == "both"]
    for (role, group), prefill in search.nearest.items():
        decode = search.nearest.get(("decode", group))
        if role == "prefill" and decode:
            candidates.append((max(prefill[0], decode[0]), [prefill, decode]))
    _, pools = min(candidates, key=lambda c: c[0])
    misses = []
    for _, estimator, batch, ttft, tpot in pools:
        where = _describe(estimator, batch)
        if ttft > w.ttft_seconds:
            misses.append(f"best TTFT {_seconds(ttft)} on {where}; target {_seconds(w.ttft_seconds)}")
        if tpot > w.tpot_seconds:
            misses.append(f"best TPOT {_seconds(tpot)} on {where}; target {_seconds(w.tpot_seconds)}")
    return f"no candidate meets {targets}: " + "; ".join(misses)


def _pareto(points: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The upper-right front of (x, y) points: each kept point has the highest y of all points with x >= its x."""
    import numpy as np

    x = np.concatenate([p[0] for p in points])
    y = np.concatenate([p[1] for p in points])
    order = np.lexsort((-y, -x))  # x descending, then y descending
    x, y = x[order], y[order]
    keep = y > np.concatenate(([-np.inf], np.maximum.accumulate(y)[:-1]))
    return x[keep][::-1], y[keep][::-1]


def _fronts(search: _Search) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    points = {label: list(values) for label, values in search.points.items()}
    for group, decodes in search.decode_points.items():
        prefills = search.prefill.get(group)
        if not prefills:
            continue
        prefill_gpu_seconds = min(o.gpu_seconds for o in prefills)
        for label, x, decode_gpu_seconds in decodes:
            points.setdefault(label, []).append((x, search.workload.osl / (prefill_gpu_seconds + decode_gpu_seconds)))
    fronts = {label: _pareto(values) for label, values in sorted(points.items())}
    return {label: front for label, front in fronts.items() if len(front[0])}


def _rows(ranked: list[tuple[tuple[Option, ...], dict]], workload: Workload, objective: str,
          rate: float | None) -> list[dict]:
    """One row per pool of each ranked plan: the plan's figures, then the pool's Estimator.row."""
    rows = []
    for rank, (plan, figures) in enumerate(ranked, 1):
        value = figures["gpus_for_rate"] if objective == "gpus" else figures[objective]
        for option in plan:
            dep = option.estimator.deployment
            rows.append({"rank": rank, "objective": objective, "objective_value": value, **figures,
                         "pool": dep.role, "copies_for_rate": option.copies(rate) if rate else None,
                         "weight_dtype": option.estimator.weights_format.name, "overlap": dep.overlap,
                         "isl": workload.isl, "osl": workload.osl, **pool_row(option.estimator, option.batch, workload)})
    return rows


def _names(value) -> list:
    """'a,b' or ['a', 'b,c'] -> ['a', 'b', 'c']; a GPU or Model stays itself."""
    values = [value] if isinstance(value, (str, GPU, Model)) else list(value)
    return [part for v in values
            for part in ([p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else [v])]


def search(model: str | Model | Sequence[str | Model], workload: Workload,
           gpu: str | GPU | Sequence[str | GPU] = DEFAULT_GPUS, max_gpus: int = 64,
           kv_dtype: str | Sequence[str] = "bf16", weight_dtype: str | Sequence[str] = "auto",
           attention: str | Sequence[str] = "native", disaggregated: bool = False, objective: str = "usd_per_mtok",
           rate: float | None = None, top: int = 10, max_batch: int = DEFAULT_MAX_BATCH, overlap: bool = False,
           front_by: str | None = None) -> Plan:
    """Search the grid (module docstring) and rank what meets the workload's targets; raise InputError naming
    the nearest miss when nothing does. `disaggregated` adds prefill/decode pool pairs to the aggregated
    deployments; `front_by` ("gpu" or "attention"; default attention when several are searched) labels the
    Pareto fronts."""
    if objective not in OBJECTIVES:
        raise InputError(f"objective must be one of {', '.join(OBJECTIVES)}, not {objective!r}")
    if objective == "gpus" and not rate:
        raise InputError("objective 'gpus' needs a request rate (requests/s)")
    if rate is not None and not rate > 0:
        raise InputError(f"rate must be positive requests/s, not {rate!r}")
    for name, value in (("max gpus", max_gpus), ("max batch", max_batch), ("top", top)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive whole number, not {value!r}")
    if not 0 <= workload.cached < workload.isl:
        raise InputError(f"cached prefix ({workload.cached}) must be at least 0 and below the prompt ({workload.isl})")
    specs = split_specs(attention) if isinstance(attention, str) else [s for a in attention for s in split_specs(a)]
    bases = [m if isinstance(m, Model) else load_model(m) for m in _names(model)]
    resolved = [recast(base, spec) if spec.split(":")[0].strip().lower() != "native" else base
                for base in bases for spec in specs]
    devices = [g if isinstance(g, GPU) else get_gpu(g) for g in _names(gpu)]
    kv_formats = [storage_format(kv) for kv in _names(kv_dtype)]
    weight_formats = [weight_storage(weight) for weight in _names(weight_dtype)]
    roles = ("both", "prefill", "decode") if disaggregated else ("both",)
    by = front_by or ("attention" if len(specs) > 1 else "gpu")
    if by not in ("gpu", "attention"):
        raise InputError(f"fronts are drawn per gpu or per attention, not {by!r}")
    state = _Search(workload, objective, rate, by, len(resolved) > len(specs))
    for model in resolved:
        if model.is_encoder:
            raise InputError(f"{model.name} is an encoder: it decodes nothing to plan for")
        for device in devices:
            for count in gpu_counts(max_gpus, device.gpus_per_node):
                for tp, pp, dp, ep in layouts(model, count):
                    batches = batch_grid(dp, max_batch)
                    for weight in weight_formats:
                        deployment = Deployment(device, tp, pp, dp, ep, weight_format=weight, overlap=overlap)
                        if not state.weights_fit(Estimator(model, deployment), len(batches) * len(kv_formats) * len(roles)):
                            continue
                        for kv, role in itertools.product(kv_formats, roles):
                            state.add(Estimator(model, replace(deployment, kv_format=kv, role=role)), batches)
    plans = _plans(state, top)
    if not plans:
        raise InputError(nearest_miss(state))
    ranked = sorted(((p, plan_figures(p, workload, rate)) for p in plans), key=lambda pf: _rank_key(objective, pf[1]))
    return Plan(_rows(ranked[:top], workload, objective, rate), _fronts(state), workload, objective, state.candidates,
                state.rows_computed)


def plan(model: str | Model | Sequence[str | Model], isl: int | str, osl: int | str, ttft: float | str,
         tpot: float | str, *, cached_prefix: int | str = 0, **options):
    """The ranked deployments (a pandas DataFrame, one row per pool of each plan, best first) that serve
    requests of `isl` prompt and `osl` output tokens within `ttft` and `tpot` (seconds, or '2s', '50ms').

    Options as `search`: gpu, max_gpus, kv_dtype, weight_dtype, attention (each a name, 'a,b' or a list),
    disaggregated, objective, rate, top, max_batch, overlap."""
    import pandas as pd

    return pd.DataFrame.from_records(search(model, workload_for(isl, osl, ttft, tpot, cached_prefix), **options).rows)


def workload_for(isl: int | str, osl: int | str, ttft: float | str, tpot: float | str,
                 cached_prefix: int | str = 0) -> Workload:
    """A Workload from sizes ('8k') and times ('2s', '50ms') as a user writes them."""
    return Workload(parse_tokens(isl, "isl"), parse_tokens(osl, "osl"), parse_seconds(ttft, "ttft"),
                    parse_seconds(tpot, "tpot"), parse_tokens(cached_prefix, "cached prefix") if cached_prefix else 0)


def plot_pareto(result: Plan, path: str) -> str:
    """Tokens/s per GPU against tokens/s per user: each label's Pareto front of the candidates that fit and
    meet TTFT, and the TPOT target as a vertical line. Writes a PNG and returns its path."""
    from .plotting import new_figure, save_figure

    figure, axes = new_figure()
    for label, (x, y) in result.fronts.items():
        axes.plot(x, y, marker=".", markersize=3, label=label)
    w = result.workload
    axes.axvline(1 / w.tpot_seconds, color="black", linestyle="--", linewidth=1,
                 label=f"TPOT target {_seconds(w.tpot_seconds)}")
    axes.set_xlabel("tokens/s per user (1 / TPOT)")
    axes.set_ylabel("output tokens/s per GPU")
    axes.set_xlim(left=0)
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    first = result.rows[0]
    axes.set_title(f"{first['model']}: {w.isl:,} in / {w.osl:,} out, TTFT <= {_seconds(w.ttft_seconds)}; "
                   "Pareto fronts", fontsize=10)
    return save_figure(figure, path)


def plan_report(model: Sequence[str], workload: Workload, plot: str | None = None, **options) -> "Report":
    """`kvplan plan`: the ranked plans (one table row per plan, every pool's row in JSON/CSV), a caption that
    says what was searched and how TTFT and TPOT are defined, and the Pareto plot when asked."""
    from .output import Report

    result = search(model, workload, **options)
    messages = [f"wrote {plot_pareto(result, plot)}"] if plot else []
    summaries = {}
    for row in result.rows:  # one line per plan: its figures and each pool's deployment
        summary = summaries.setdefault(row["rank"], {**row, "pools": []})
        layout = " ".join(f"{name} {row[name]}" for name in ("tp", "pp", "dp", "ep") if row[name] > 1)
        gpus = f"{row['gpus']} GPUs ({layout})" if layout else "1 GPU"
        where = {"both": "", "prefill": "prefill ", "decode": "decode "}[row["pool"]]
        summary["pools"].append(f"{where}{gpus}, batch {row['batch']}")
    table_rows = [{**summary, "pools": "; ".join(summary["pools"])} for summary in summaries.values()]
    caption = (f"{result.candidates:,} candidates searched ({result.rows_computed:,} fit their weights); ranked by "
               f"{OBJECTIVES[result.objective]}. TTFT: one request's prompt on its pool (aggregated: alone; "
               f"disaggregated: with its pool's batch, plus the cache sent to the decode pool). TPOT: the decode "
               f"step of the batch at {workload.context:,} tokens (aggregated: plus the prompt chunks of the "
               f"requests joining per step). GiB = 2^30 bytes.")
    title = (f"kvplan plan: {', '.join(str(m) for m in _names(model))}, {workload.isl:,} in / {workload.osl:,} out, "
             f"TTFT <= {_seconds(workload.ttft_seconds)}, TPOT <= {_seconds(workload.tpot_seconds)}")
    return Report(result.rows, title=title, caption=caption, messages=messages, table_rows=table_rows)
