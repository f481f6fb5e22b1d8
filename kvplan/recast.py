"""'What if' re-casts: `--attention KIND[:k=v,...]` turns a model's attention into another kind.

The re-cast keeps d_model, depth, head count and feed-forward; only the attention (and, for `window`, the
per-layer windows) change. Specs:
  native                       the model as published
  mha | mqa | gqa[:kv_heads=N]  dense attention, head_dim kept (default kv_heads 8, or a divisor of heads)
  mla[:kv_lora_rank=,qk_rope_head_dim=,qk_nope_head_dim=,v_head_dim=,q_lora_rank=]
  tpa[:q_rank=6,k_rank=2,v_rank=2]
  dsa[:index_topk=2048,index_n_heads=64,index_head_dim=128]   (on the model's MLA, or a default MLA)
  window:W  or  window:size=W[,global_every=N]   windows on the model's own attention; global_every=N keeps
                                                every Nth layer global (as Gemma 3's 5 local : 1 global)
Any kind also takes window=W and global_every=N, e.g. gqa:kv_heads=4,window=4096.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Sequence

from .attention import DSA, MLA, TPA, DenseAttention
from .model import Model
from .units import InputError, parse_tokens

KINDS = ("native", "mha", "mqa", "gqa", "mla", "tpa", "dsa", "window")


def _head_dim(model: Model) -> int:
    attention = model.attention
    if isinstance(attention, DSA):
        attention = attention.mla
    if isinstance(attention, MLA):
        return attention.v_head_dim
    return attention.head_dim


def _default_mla(model: Model) -> MLA:
    if isinstance(model.attention, MLA):
        return model.attention
    if isinstance(model.attention, DSA):
        return model.attention.mla
    d_h = _head_dim(model)
    # DeepSeek-V2/V3 proportions: latent 4 head dims, RoPE key half a head dim.
    return MLA(n_heads=model.attention.n_heads, kv_lora_rank=4 * d_h, qk_rope_head_dim=d_h // 2,
               qk_nope_head_dim=d_h, v_head_dim=d_h, q_lora_rank=0)


def _parse_options(spec: str, text: str) -> dict[str, str]:
    options = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise InputError(f"--attention {spec!r}: expected key=value, got {part!r}")
        key, value = (s.strip() for s in part.split("=", 1))
        options[key] = value
    return options


def _ints(spec: str, options: dict[str, str], allowed: tuple[str, ...]) -> dict[str, int]:
    unknown = set(options) - set(allowed)
    if unknown:
        raise InputError(f"--attention {spec!r}: unknown option(s) {', '.join(sorted(unknown))}; "
                         f"allowed: {', '.join(allowed)}")
    values = {}
    for key, value in options.items():
        try:
            number = int(value)
        except ValueError:
            raise InputError(f"--attention {spec!r}: {key} must be a whole number, not {value!r}") from None
        if number < (0 if key == "q_lora_rank" else 1):
            raise InputError(f"--attention {spec!r}: {key} must be positive, not {value!r}")
        values[key] = number
    return values


def recast(model: Model, spec: str) -> Model:
    """The model with its attention re-cast as `spec` says; the returned Model's name notes the change."""
    spec = spec.strip()
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise InputError(f"unknown attention kind {kind!r} in --attention {spec!r}; choose from {', '.join(KINDS)}")
    if kind == "window" and rest and "=" not in rest.split(",")[0]:
        rest = "size=" + rest
    options = _parse_options(spec, rest)
    window_options = {k: options.pop(k) for k in ("window", "size", "global_every") if k in options}
    if kind != "window" and "size" in window_options:
        raise InputError(f"--attention {spec!r}: unknown option size (use window=W)")
    heads, d_h = model.attention.n_heads, _head_dim(model)
    attention = model.attention

    if kind in ("mha", "mqa", "gqa"):
        values = _ints(spec, options, ("kv_heads",) if kind == "gqa" else ())
        if kind == "mha":
            kv_heads = heads
        elif kind == "mqa":
            kv_heads = 1
        else:
            kv_heads = values.get("kv_heads") or next(k for k in (8, 4, 2, 1) if heads % k == 0)
        if heads % kv_heads:
            raise InputError(f"--attention {spec!r}: kv_heads={kv_heads} must divide the model's {heads} heads")
        attention = DenseAttention(n_heads=heads, n_kv_heads=kv_heads, head_dim=d_h)
    elif kind == "mla":
        allowed = tuple(f.name for f in fields(MLA) if f.name != "n_heads")
        attention = replace(_default_mla(model), **_ints(spec, options, allowed))
    elif kind == "tpa":
        values = _ints(spec, options, ("q_rank", "k_rank", "v_rank"))
        base = model.attention if isinstance(model.attention, TPA) else TPA(n_heads=heads, head_dim=d_h)
        attention = replace(base, **values)
    elif kind == "dsa":
        values = _ints(spec, options, ("index_topk", "index_n_heads", "index_head_dim"))
        base = model.attention if isinstance(model.attention, DSA) else DSA(_default_mla(model))
        attention = replace(base, **values)
    elif kind in ("native", "window"):
        _ints(spec, options, ())

    windows = model.layer_windows
    if kind == "window" and "size" not in window_options:
        raise InputError(f"--attention {spec!r}: give the window, e.g. window:4096")
    size_text = window_options.get("size") or window_options.get("window")
    if size_text is not None:
        size = parse_tokens(size_text, f"--attention {spec!r} window")
        every = int(_ints(spec, {"global_every": window_options["global_every"]}, ("global_every",))["global_every"]) \
            if "global_every" in window_options else 0
        windows = tuple(None if every and (i + 1) % every == 0 else size for i in range(model.n_layers))
    elif "global_every" in window_options:
        raise InputError(f"--attention {spec!r}: global_every needs a window size")

    name = model.name if kind == "native" else f"{model.name} [{spec}]"
    return replace(model, name=name, attention=attention, layer_windows=windows)


def split_specs(values: Sequence[str] | str | None) -> list[str]:
    """'mha,gqa,tpa:k_rank=2,v_rank=2,window:4096' -> ['mha', 'gqa', 'tpa:k_rank=2,v_rank=2', 'window:4096'].

    A comma-separated piece of the form key=value continues the previous spec's options.
    """
    if values is None:
        return []
    specs: list[str] = []
    for value in [values] if isinstance(values, str) else values:
        for piece in filter(None, (p.strip() for p in value.split(","))):
            if "=" in piece and ":" not in piece and specs and ":" in specs[-1]:
                specs[-1] += "," + piece
            else:
                specs.append(piece)
    return specs
