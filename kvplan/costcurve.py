"""Cost against token position: $ per million tokens for prefill and for decode at each position 0..context.

This is the comparison DeepSeek-V3.2's report draws for dense MLA against DSA on H800s. What each curve means:
- decode at position p: the roofline time of the decode step that writes the token at 0-based position p for
  a batch of B sequences (each then holding p + 1 tokens; Estimator.decode_step), times the deployment's
  $/second, per token of the batch. Dense attention reads and multiplies over all p + 1 cached tokens, so it
  rises with p; DSA attends only its top-k (its indexer still scores all p + 1 keys, far more cheaply).
- prefill at position p: the marginal cost of prompt tokens at p: the roofline time of one prefill chunk of
  `chunk` tokens per sequence starting at p, with the p tokens before it already cached
  (Estimator.prefill_chunk: linear FLOPs plus attention FLOPs with start = p, the weights read once per chunk),
  per token of the chunk. A chunk of a few thousand tokens, as chunked-prefill engines use, keeps prefill
  compute-bound, so the curve shows the attention term growing with p over the constant linear layers.
Both are $ per million tokens at the GPU price (`--usd-per-hour` or the preset's), whole deployment.
"""

from __future__ import annotations

from .estimator import Estimator

DEFAULT_CHUNK = 8192  # tokens per prefill chunk (vLLM's and SGLang's default chunked-prefill budget)


def positions(context: int, points: int) -> list[int]:
    """`points` evenly spaced 0-based positions from 0 to context - 1 (both ends included)."""
    if points < 2 or context < 2:
        return [0] if context < 2 else [0, context - 1]
    return sorted({(context - 1) * i // (points - 1) for i in range(points)})


def cost_at(estimator: Estimator, position: int, batch: int = 1, chunk: int = DEFAULT_CHUNK) -> dict:
    """Prefill and decode $ per million tokens at one 0-based token position."""
    usd_per_second = estimator.usd_per_second()
    _, prefill_seconds = estimator.prefill_chunk(batch, chunk, start=position)
    _, decode_seconds = estimator.decode_step(batch, position + 1)
    return {
        "position": position,
        "prefill_usd_per_mtok": usd_per_second * prefill_seconds / (batch * chunk) * 1e6,
        "decode_usd_per_mtok": usd_per_second * decode_seconds / batch * 1e6,
        "decode_seconds_per_token": decode_seconds,
    }


def cost_curve(estimator: Estimator, context: int, batch: int = 1, chunk: int = DEFAULT_CHUNK,
               points: int = 65) -> list[dict]:
    """One flat row per position, labelled with the model, kind and deployment."""
    model, dep = estimator.model, estimator.deployment
    label = {"model": model.name, "attention": model.kind_label, "gpu": dep.gpu.name, "gpus": dep.gpus,
             "usd_per_hour": dep.gpu.usd_per_hour, "kv_dtype": dep.kv_format.name, "weight_dtype": dep.weight_format.name, "batch": batch, "chunk": chunk}
    return [{**label, **cost_at(estimator, p, batch, chunk)} for p in positions(context, points)]


def plot_cost(curves: list[list[dict]], path: str) -> str:
    """Two panels, prefill and decode $/Mtok against token position, one line per attention kind."""
    from .plotting import new_figure, save_figure, token_axis

    figure, (prefill_ax, decode_ax) = new_figure(columns=2)
    for curve in curves:
        xs = [r["position"] for r in curve]
        label = f"{curve[0]['attention']}, kv {curve[0]['kv_dtype']}"
        prefill_ax.plot(xs, [r["prefill_usd_per_mtok"] for r in curve], label=label)
        decode_ax.plot(xs, [r["decode_usd_per_mtok"] for r in curve], label=label)
    first = curves[0][0]
    for ax, phase, detail in ((prefill_ax, "prefill", f"{first['chunk']:,}-token chunks"),
                              (decode_ax, "decode", f"batch {first['batch']}")):
        token_axis(ax, "token position")
        ax.set_ylabel(f"{phase} $ per million tokens")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{phase}, {detail}", fontsize=10)
        ax.legend(fontsize=8)
    figure.suptitle(f"{first['model'].split(' [')[0]} ({first['weight_dtype']} weights) on {first['gpu']} x{first['gpus']} "
                    f"at ${first['usd_per_hour']:.2f}/GPU-hour: cost by token position",
                    fontsize=11)
    return save_figure(figure, path)
