"""'What if' re-casts: `--attention KIND[:k=v,...]` turns a model's attention into another kind.

The re-cast keeps d_model, depth, head count and feed-forward; only the attention (and, for `window`, the
per-layer windows) change. KIND is `native` (the model as published), `window`, or a name in
kvplan.kinds.RECAST_NAMES, whose kind says which options it takes (`recast_help()` lists them all):
  mha | mqa | gqa[:kv_heads=N]  dense attention, head_dim kept (default kv_heads 8, or a divisor of heads)
  mla[:kv_lora_rank=,qk_rope_head_dim=,qk_nope_head_dim=,v_head_dim=,q_lora_rank=]
  tpa[:q_rank=6,k_rank=2,v_rank=2]
  dsa[:index_topk=2048,index_n_heads=64,index_head_dim=128]   (on the model's MLA, or a default MLA)
  window:W  or  window:size=W[,global_every=N]   windows on the model's own attention; global_every=N keeps
                                                every Nth layer global (as Gemma 3's 5 local : 1 global)
  gdn[:key_heads=,chunk=,attention_every=N]      Gated DeltaNet layers (Qwen3-Next's linear attention)
  mamba2[:heads=,head_dim=,state_size=,groups=,chunk=,attention_every=N]   Mamba-2 layers
  hybrid[:attention_every=4]                     gdn on every layer but every 4th, which keeps the attention
A recurrent kind (gdn, mamba2, hybrid) replaces the attention of every layer but every attention_every-th
(none by default; hybrid: every 4th, as Qwen3-Next).
Any kind also takes window=W and global_every=N, e.g. gqa:kv_heads=4,window=4096.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from .kinds import RECAST_NAMES
from .model import Model, hybrid_layers
from .units import InputError, parse_tokens

KINDS = ("native", *RECAST_NAMES, "window")


def recast_help(option_separator: str = ",") -> str:
    """'native, mha, mqa, gqa[:kv_heads], ...': every --attention name with its options, from the registry
    (", " between options lets a narrow terminal wrap the list rather than cut it)."""
    parts = []
    for name in KINDS:
        cls = RECAST_NAMES.get(name)
        options = list(cls.recast_options(name)) if cls else (["size", "global_every"] if name == "window" else [])
        if cls and cls.recurrent:
            options.append("attention_every")
        parts.append(f"{name}[:{option_separator.join(options)}]" if options else name)
    return ", ".join(parts)


def _parse_options(spec: str, text: str) -> dict[str, str]:
    options = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise InputError(f"--attention {spec!r}: expected key=value, got {part!r}")
        key, value = (s.strip() for s in part.split("=", 1))
        options[key] = value
    return options


def _ints(spec: str, options: dict[str, str], allowed: dict[str, int]) -> dict[str, int]:
    """Whole-number options, each at least its minimum in `allowed`."""
    unknown = set(options) - set(allowed)
    if unknown:
        raise InputError(f"--attention {spec!r}: unknown option(s) {', '.join(sorted(unknown))}; "
                         f"allowed: {', '.join(allowed) or 'none'}")
    values = {}
    for key, value in options.items():
        try:
            number = int(value)
        except ValueError:
            raise InputError(f"--attention {spec!r}: {key} must be a whole number, not {value!r}") from None
        if number < allowed[key]:
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
    attention, recurrent, mixers = model.attention, model.recurrent, model.layer_mixers
    cls = RECAST_NAMES.get(kind)
    if cls and cls.recurrent:
        every = _ints(spec, {"attention_every": options.pop("attention_every")}, {"attention_every": 1}) \
            if "attention_every" in options else {"attention_every": cls.recast_attention_every.get(kind, 0)}
        mixers = hybrid_layers(model.n_layers, every["attention_every"])
    if cls:
        values = _ints(spec, options, cls.recast_options(kind))
        current = recurrent if cls.recurrent and isinstance(recurrent, cls) else attention
        try:
            built = cls.recast_from(kind, current, values)
        except InputError as error:
            raise InputError(f"--attention {spec!r}: {error}") from None
        attention, recurrent = (attention, built) if cls.recurrent else (built, recurrent)
    else:
        _ints(spec, options, {})

    windows = model.layer_windows
    if kind == "window" and "size" not in window_options:
        raise InputError(f"--attention {spec!r}: give the window, e.g. window:4096")
    size_text = window_options.get("size") or window_options.get("window")
    if size_text is not None:
        size = parse_tokens(size_text, f"--attention {spec!r} window")
        every = _ints(spec, {"global_every": window_options["global_every"]}, {"global_every": 1})["global_every"] \
            if "global_every" in window_options else 0
        windows = tuple(None if every and (i + 1) % every == 0 else size for i in range(model.n_layers))
    elif "global_every" in window_options:
        raise InputError(f"--attention {spec!r}: global_every needs a window size")

    name = model.name if kind == "native" else f"{model.name} [{spec}]"
    return replace(model, name=name, attention=attention, layer_windows=windows, recurrent=recurrent,
                   layer_mixers=mixers)


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
