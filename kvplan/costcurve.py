"""Cost against token position: $ per million tokens for prefill and for decode at each position 0..context.

This is the comparison DeepSeek-V3.2's report draws for dense MLA against DSA on H800s. What each curve means:
- decode at position p: the roofline time of the decode step that writes the token at 0-based position p for
  a batch of B sequences (each then holding p + 1 tokens; Estimator.decode_step), times the deployment's
  $/second, per token of the batch. Dense attention reads and multiplies over all p + 1 cached tokens, so it
  rises with p; DSA attends only its top-k (its indexer still scores all p + 1 keys, far more cheaply).
- prefill at position p: the marginal cost of prompt tokens at p: the roofline time of one prefill chunk of
  `chunk` tokens per sequence starting at p, with the p tokens before it already cached
  (Estimator.prefill: linear FLOPs plus attention FLOPs with start = p, the weights read once per chunk),
  per token of the chunk. A chunk of a few thousand tokens, as chunked-prefill engines use, keeps prefill
  compute-bound, so the curve shows the attention term growing with p over the constant linear layers.
Both are $ per million tokens at the GPU price (`--usd-per-hour` or the preset's), whole deployment.
"""

from __future__ import annotations

from .api import context_or_default, estimator_warnings, native_and_recasts
from .estimator import Estimator
from .output import Report, deployment_caption
from .units import ceil_div, format_gib, format_tokens

DEFAULT_CHUNK = 8192  # tokens per prefill chunk (vLLM's and SGLang's default chunked-prefill budget)
TABLE_POSITIONS = 5  # rows per kind in the table; JSON, CSV and the plot take every point


def positions(context: int, points: int) -> list[int]:
    """`points` evenly spaced 0-based positions from 0 to context - 1 (both ends included)."""
    if points < 2 or context < 2:
        return [0] if context < 2 else [0, context - 1]
    return sorted({(context - 1) * i // (points - 1) for i in range(points)})


def cost_at(estimator: Estimator, position: int, batch: int = 1, chunk: int = DEFAULT_CHUNK) -> dict:
    """Prefill and decode $ per million tokens at one 0-based token position."""
    usd_per_second = estimator.usd_per_second()
    _, prefill_seconds = estimator.prefill(batch, chunk, start=position)
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
             "usd_per_hour": dep.gpu.usd_per_hour, "kv_dtype": dep.kv_format.name,
             "weight_dtype": estimator.weights_format.name, "batch": batch, "chunk": chunk}
    return [{**label, **cost_at(estimator, p, batch, chunk)} for p in positions(context, points)]


def cost_report(deployment: dict, context: int | None = None, batch: int = 1, chunk: int = DEFAULT_CHUNK,
                points: int = 65, plot: str | None = None) -> Report:
    """`kvplan cost`: cost_curve rows of `points` positions for the model's own attention, then each re-cast of
    the deployment given as keyword arguments of kvplan.api.estimators, up to `context` (default: the model's
    max positions), with a warning for each kind that does not fit at that context; the table shows
    TABLE_POSITIONS positions per kind. With `plot`, a PNG of both curves written there.

    `chunk` is tokens per sequence of each priced prefill chunk; unless the deployment sets its own prefill
    chunk (tokens per forward of one engine: a data-parallel rank), its sequences x chunk tokens are in flight
    when memory is checked.
    """
    in_flight = ceil_div(batch, deployment.get("dp", 1)) * chunk
    found = native_and_recasts({**deployment, "prefill_chunk": deployment.get("prefill_chunk") or in_flight})
    tokens = context_or_default(context, found[0].model)
    messages = [f"warning: {m}" for e in found for m in estimator_warnings(e, [tokens])]
    if chunk > tokens:
        messages.append(f"warning: the priced prefill chunk ({chunk:,} tokens per sequence) is longer than the "
                        f"context ({tokens:,}): every chunk is priced at {chunk:,} tokens all the same, reaching past "
                        f"the context")
    for estimator in found:
        row = estimator.row(batch, tokens)
        if not row["fits"]:
            messages.append(f"warning: {row['attention']} at batch {batch} and {format_tokens(tokens)} tokens needs "
                            f"{format_gib(row['total_bytes_per_gpu'])} GiB per GPU of "
                            f"{format_gib(row['usable_memory_bytes'])} (does not fit); costs estimated anyway")
    curves = [cost_curve(e, tokens, batch, chunk, points) for e in found]
    if plot:
        from .plotting import plot_cost

        messages.append(f"wrote {plot_cost(curves, plot)}")
    table_rows = [r for e in found for r in cost_curve(e, tokens, batch, chunk, TABLE_POSITIONS)]
    return Report([row for curve in curves for row in curve], table_rows=table_rows, messages=messages,
                  title=f"kvplan cost by token position, {found[0].model.name}: batch {batch}",
                  caption=deployment_caption(found[0].deployment, found[0].weights_format)
                  + f"; prefill in {chunk:,}-token chunks")
