"""Which estimate figure each measurement is checked against, the relative errors, and full-depth scaling.

measured                      estimate (kvplan.estimator.Estimator, same sliced model, batch, context, kv dtype)
cache_bytes                   kv_cache_bytes (the cache tensors as allocated for batch x context)
weights_bytes                 weights_bytes (the parameters' bytes)
prefill_peak_bytes            activation_bytes_per_gpu (CUDA max allocated during prefill, above weights+cache)
prefill_seconds               prefill_seconds (roofline of the whole prompt)
decode_seconds                decode_seconds_per_token (roofline of the step writing the context-th token)
prefill_flops_counted         profilers.flops.counted_prefill_flops (what FlopCounterMode sees: full rectangles)
decode_flops                  batch x decode_flops_per_token(context - 1)
                              (a chunked layer's decode scores every slot of its one-chunk cache and masks those
                              after the token's, so below a whole number of chunks it counts more than the
                              p mod chunk + 1 keys the estimate counts)
The exact causal prefill FLOPs (what the roofline uses) are reported beside the counted ones.

error = estimate / measured - 1 (positive: the estimate is higher than what was measured).
"""

from __future__ import annotations

from kvplan.estimator import Estimator

from .flops import counted_prefill_flops

# name -> (header, unit divisor, unit)
FIGURES = {
    "cache_bytes": ("KV cache", 2**30, "GiB"),
    "weights_bytes": ("weights", 2**30, "GiB"),
    "prefill_peak_bytes": ("prefill peak", 2**30, "GiB"),
    "prefill_seconds": ("prefill", 1e-3, "ms"),
    "decode_seconds": ("decode step", 1e-3, "ms"),
    "prefill_flops_counted": ("prefill FLOPs counted", 1e12, "TFLOP"),
    "decode_flops": ("decode FLOPs", 1e9, "GFLOP"),
}
# Figures that grow with depth: a slice's measurement is scaled to the full model by the estimate's ratio.
SCALED = ("cache_bytes", "prefill_peak_bytes", "prefill_seconds", "decode_seconds")


def estimate_figures(est: Estimator, batch: int, context: int) -> dict:
    row = est.row(batch, context)
    return {
        "cache_bytes_estimate": row["kv_cache_bytes"],
        "weights_bytes_estimate": row["weights_bytes"],
        "prefill_peak_bytes_estimate": row["activation_bytes_per_gpu"],
        "prefill_seconds_estimate": row["prefill_seconds"],
        "decode_seconds_estimate": row["decode_seconds_per_token"],
        "prefill_flops_counted_estimate": counted_prefill_flops(est, batch, context),
        "prefill_flops_causal_estimate": row["prefill_flops"],
        "decode_flops_estimate": batch * row["decode_flops_per_token"],
        "total_bytes_per_gpu_estimate": row["total_bytes_per_gpu"],
        "fits_estimate": row["fits"],
    }


def relative_error(estimate, measured) -> float | None:
    if estimate is None or measured in (None, "", 0):
        return None
    return float(estimate) / float(measured) - 1


def compare(row: dict, est: Estimator, full: Estimator) -> None:
    """Add estimates, errors and full-depth figures to a row holding measurements (in place)."""
    batch, context = row["batch"], row["context"]
    row.update(estimate_figures(est, batch, context))
    row["fits_full_depth_estimate"] = full.row(batch, context)["fits"]
    for name in FIGURES:
        row[f"{name}_error"] = relative_error(row.get(f"{name}_estimate"), row.get(f"{name}_measured"))
    if est.model.n_layers == full.model.n_layers:
        for name in SCALED:
            row[f"{name}_full_depth"] = row.get(f"{name}_measured")
        return
    whole = estimate_figures(full, batch, context)
    for name in SCALED:
        measured, part = row.get(f"{name}_measured"), row[f"{name}_estimate"]
        row[f"{name}_full_depth"] = None if measured is None or not part else \
            measured * whole[f"{name}_estimate"] / part


def scaling_note(layers: int, full_layers: int) -> str:
    if layers == full_layers:
        return f"all {full_layers} layers run"
    return (f"measured on the first {layers} of {full_layers} layers; errors compare that slice with the estimate "
            f"of the same slice; *_full_depth = measured x (full-depth estimate / {layers}-layer estimate)")
