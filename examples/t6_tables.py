"""The README's T6 tables: the presets' parameter counts, the TPA paper's KV-cache comparison (its Table 1
formulas) at the paper's four sizes with bytes from kvplan.estimate, and TPA's decode FLOPs per cached key in
both contraction orders.

    python3 examples/t6_tables.py
"""

from __future__ import annotations

import kvplan
from kvplan.presets import get_preset

SIZES = ("small", "medium", "large", "xl")
# Paper Table 1's "KV cache" column, per token per layer, in elements.
FORMULAS = {"mha": "2 h d_h", "mqa": "2 d_h", "gqa": "2 G d_h", "mla": "d_c + d_h^R", "": "(R_K + R_V)(h + d_h)"}


def _shape(model) -> str:
    """The symbols of the formula as this model sets them."""
    a = model.attention
    kind = getattr(a, "kind", a.name)
    if kind in ("mha", "mqa"):
        return f"h={a.n_heads}"
    if kind == "gqa":
        return f"h={a.n_heads}, G={a.n_kv_heads}"
    if kind == "mla":
        return f"d_c={a.kv_lora_rank}, d_h^R={a.qk_rope_head_dim}"
    return f"h={a.n_heads}"


def params_table() -> list[str]:
    lines = ["| parameters | " + " | ".join(("T6", "MHA", "MQA", "GQA", "MLA")) + " |",
             "|---|" + "---:|" * 5]
    for size in SIZES:
        counts = [get_preset(f"t6-{size}{s}").total_params() for s in ("", "-mha", "-mqa", "-gqa", "-mla")]
        lines.append(f"| {size} | " + " | ".join(f"{n:,}" for n in counts) + " |")
    return lines


def kv_table() -> list[str]:
    lines = ["| attention | per token per layer (paper, Table 1) | " + " | ".join(SIZES) + " |",
             "|---|---|" + "---:|" * len(SIZES)]
    for suffix, formula in FORMULAS.items():
        cells = []
        for size in SIZES:
            name = f"t6-{size}-{suffix}" if suffix else f"t6-{size}"
            model = get_preset(name)
            row = kvplan.estimate(name, context=1024, kv_dtype="bf16")
            cells.append(f"{row['kv_bytes_per_token'] // model.n_layers:,} ({_shape(model)})")
        label = suffix.upper() if suffix else "TPA (T6)"
        lines.append(f"| {label} | {formula} | " + " | ".join(cells) + " |")
    return lines


def flops_table() -> list[str]:
    lines = ["| T6 size | h | rebuild: per key | rebuild: per token | flash: per key | rebuild / flash per key | runs |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for size in SIZES:
        tpa = get_preset(f"t6-{size}").attention
        rebuild, flash = tpa.decode_pair_flops("rebuild"), tpa.decode_pair_flops("flash")
        lines.append(f"| {size} | {tpa.n_heads} | {rebuild:,} | {tpa.decode_token_flops('rebuild'):,} | {flash:,} | "
                     f"{rebuild / flash:.2f}x | {tpa.decode_order} |")
    return lines


if __name__ == "__main__":
    print("\n\n".join("\n".join(table()) for table in (params_table, kv_table, flops_table)))
