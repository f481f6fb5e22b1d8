"""Printing profile rows and calibration profiles: a rich table for people, JSON/CSV (same rows) for programs."""

from __future__ import annotations

from kvplan.output import emit
from kvplan.units import format_tokens

from .compare import FIGURES, scaling_note


def _percent(error) -> str:
    if error is None:
        return ""
    colour = "green" if abs(error) <= 0.05 else "yellow" if abs(error) <= 0.10 else "red"
    return f"[{colour}]{error:+.1%}[/]"


def figure_cell(name: str):
    """'measured / estimate (error)' in the figure's unit."""
    _, scale, _ = FIGURES[name]

    def cell(row: dict) -> str:
        measured, estimate = row.get(f"{name}_measured"), row.get(f"{name}_estimate")
        est_text = "-" if estimate is None else f"{estimate / scale:,.3g}"
        if measured is None:
            return f"- / {est_text}"
        return f"{measured / scale:,.3g} / {est_text} {_percent(row.get(f'{name}_error'))}"

    return cell


def _status(row: dict) -> str:
    verdict = "fits" if row.get("fits_estimate") else "does not fit"
    status = row.get("status") or ""
    colour = "green" if status == "ok" else "red"
    return f"[{colour}]{status}[/] (estimate: {verdict})"


COLUMNS = [("attention", lambda r: str(r["attention_kind"])),
           ("layers", lambda r: f"{r['layers']}/{r['full_layers']}"),
           ("batch", lambda r: str(r["batch"])),
           ("context", lambda r: format_tokens(int(r["context"]))),
           ("measured", _status)]
COLUMNS += [(f"{header} {unit}", figure_cell(name)) for name, (header, _, unit) in FIGURES.items()
            if name != "weights_bytes"]  # weights are in --json/--csv; the table keeps what varies by row
COLUMNS += [("prefill TFLOP causal", lambda r: f"{r['prefill_flops_causal_estimate'] / 1e12:,.3g}"),
            ("decode", lambda r: str(r.get("decode_mode") or "-"))]


def print_rows(rows: list[dict], as_json: bool, as_csv: bool) -> None:
    if not rows:
        return
    first = rows[0]
    notes = sorted({scaling_note(int(r["layers"]), int(r["full_layers"])) for r in rows})
    caption = (f"measured / estimate (error = estimate / measured - 1) on {first.get('gpu_name')} "
               f"({first.get('device')}, {first.get('dtype')}); estimate: {first.get('estimate_gpu')} at "
               f"GEMM compute {float(first.get('compute_efficiency')):.0%}, attention "
               f"{float(first.get('attention_efficiency')):.0%}, GEMM bandwidth "
               f"{float(first.get('bandwidth_efficiency')):.0%} (per-operation roofline); GiB = 2^30 bytes. FLOPs counted = as "
               f"FlopCounterMode sees them (whole query x key rectangles); causal = what is computed. "
               + "; ".join(notes))
    emit(rows, as_json, as_csv, COLUMNS, title="kvplan profile", caption=caption)


def print_profile(profile: dict, path: str | None) -> None:
    gpu, measured = profile["gpu"], profile["measured"]
    rows = [
        {"figure": "copy bandwidth", "value": f"{measured['copy_bandwidth_bytes_per_s'] / 1e12:,.3f} TB/s",
         "of peak": f"{measured['copy_efficiency']:.1%}"},
        {"figure": f"matmul {measured['matmul_n']}^3 {measured['matmul_dtype']}",
         "value": f"{measured['matmul_flops'] / 1e12:,.4g} TFLOP/s", "of peak": f"{measured['matmul_efficiency']:.1%}"},
    ]
    for point in measured["decode_points"]:
        rows.append({"figure": f"decode step, batch {point['batch']}, context {format_tokens(point['context'])}",
                     "value": f"{point['seconds'] * 1e3:,.3f} ms", "profile predicts": _predicted(point)})
    for point in measured["prefill_points"]:
        rows.append({"figure": f"prefill, batch {point['batch']}, context {format_tokens(point['context'])}",
                     "value": f"{point['seconds'] * 1e3:,.2f} ms", "profile predicts": _predicted(point)})
    columns = [(key, (lambda k: lambda r: r.get(k, ""))(key)) for key in ("figure", "value", "of peak", "profile predicts")]
    caption = (f"{gpu['name']}: peaks {gpu['bandwidth_bytes_per_s'] / 1e12:,.4g} TB/s and {gpu['bf16_flops'] / 1e12:,.4g} "
               f"TFLOP/s; {kernel_summary(gpu['kernels'])}; reference: {measured['reference_model']}"
               + (f"; written to {path}" if path else "; not saved (use --out)"))
    emit(rows, False, False, columns, title="kvplan calibrate", caption=caption)


def kernel_summary(kernels: dict) -> str:
    """The measured kernels of a profile in one line."""
    gemm, attention, decode, copy = (kernels[k] for k in ("gemm", "prefill_attention", "decode_attention", "elementwise"))
    return (f"GEMM {gemm['compute']:.1%} of peak FLOP/s, {gemm['bandwidth']:.1%} of bandwidth, "
            f"{gemm['call_seconds'] * 1e6:,.1f} us a call; prefill attention {attention['compute']:.1%} x L / (L + "
            f"{kernels['attention_half_tokens']:,.0f}); decode attention {decode['bandwidth']:.1%} of bandwidth + "
            f"{decode['call_seconds'] * 1e6:,.1f} us; copies {copy['bandwidth']:.1%} + {copy['call_seconds'] * 1e6:,.1f} us")


def _predicted(point: dict) -> str:
    return f"{point['predicted_seconds'] * 1e3:,.3f} ms ({point['error']:+.1%})"
