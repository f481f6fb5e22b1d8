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
  mamba[:d_inner=,state_size=,dt_rank=,chunk=,attention_every=N]          Mamba-1 layers (Jamba's)
  hybrid[:attention_every=4]                     gdn on every layer but every 4th, which keeps the attention
A recurrent kind (gdn, mamba2, mamba, hybrid) replaces the attention of every layer but every attention_every-th
(none by default; hybrid: every 4th, as Qwen3-Next).
Any kind also takes window=W and global_every=N, e.g. gqa:kv_heads=4,window=4096.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from .kinds import RECAST_NAMES
from .model import Model, hybrid_layers
from .units import InputError, parse_count

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


def _bad(spec: str, message: str) -> InputError:
    return InputError(f"attention {spec!r}: {message}", "attention")


def _parse_options(spec: str, text: str) -> dict[str, str]:
    options = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep or not key or not value:
            raise _bad(spec, f"expected key=value, got {part!r}")
        if key in options:
            raise _bad(spec, f"{key} is given twice")
        options[key] = value
    return options


def _ints(spec: str, options: dict[str, str], allowed: dict[str, int]) -> dict[str, int]:
    """Whole-number options (4096, 4k, 1e6), each at least its minimum in `allowed`."""
    unknown = set(options) - set(allowed)
    if unknown:
        raise _bad(spec, f"unknown option(s) {', '.join(sorted(unknown))}; allowed: {', '.join(allowed) or 'none'}")
    try:
        return {key: parse_count(value, key, minimum=allowed[key]) for key, value in options.items()}
    except InputError as error:
        raise _bad(spec, str(error)) from None


def recast(model: Model, spec: str) -> Model:
    """The model with its attention re-cast as `spec` says; the returned Model's name notes the change."""
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"attention must name a kind ({', '.join(KINDS)}), not {spec!r}", "attention")
    spec = spec.strip()
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        hint = f"; options follow a kind and a colon: KIND:{kind}" if "=" in kind else ""
        raise _bad(spec, f"unknown kind {kind!r}; choose from {', '.join(KINDS)}{hint}")
    if kind == "window" and rest and "=" not in rest.split(",")[0]:
        rest = "size=" + rest
    options = _parse_options(spec, rest)
    window_options = {k: options.pop(k) for k in ("window", "size", "global_every") if k in options}
    if kind != "window" and "size" in window_options:
        raise _bad(spec, "unknown option size (use window=W)")
    if "window" in window_options and "size" in window_options:
        raise _bad(spec, "give the window once (size or window)")
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
            raise _bad(spec, str(error)) from None
        attention, recurrent = (attention, built) if cls.recurrent else (built, recurrent)
    else:
        _ints(spec, options, {})

    windows, chunked = model.layer_windows, model.chunked
    if kind == "window" and "size" not in window_options:
        raise _bad(spec, "give the window, e.g. window:4096")
    size_text = window_options.get("size") or window_options.get("window")
    if size_text is not None:
        size = _ints(spec, {"window": size_text}, {"window": 1})["window"]
        every = _ints(spec, {"global_every": window_options["global_every"]}, {"global_every": 1})["global_every"] \
            if "global_every" in window_options else 0
        windows = tuple(None if every and (i + 1) % every == 0 else size for i in range(model.n_layers))
        chunked = False  # the windows asked for slide, whatever the model's own layers did (Llama 4's chunks)
    elif "global_every" in window_options:
        raise _bad(spec, "global_every needs a window size")

    name = model.name if kind == "native" else f"{model.name} [{spec}]"
    return replace(model, name=name, attention=attention, layer_windows=windows, chunked=chunked,
                   recurrent=recurrent, layer_mixers=mixers)


def split_specs(values: Sequence[str] | str | None) -> list[str]:
    """'mha,gqa,tpa:k_rank=2,v_rank=2,window:4096' -> ['mha', 'gqa', 'tpa:k_rank=2,v_rank=2', 'window:4096'].

    A comma-separated piece of the form key=value continues the previous spec's options. A value naming no
    kind ('' or ',') and options with no kind before them ('mla,kv_lora_rank=256') are refused.
    """
    if values is None:
        return []
    specs: list[str] = []
    for value in [values] if isinstance(values, str) else values:
        pieces = [p.strip() for p in str(value).split(",") if p.strip()]
        if not pieces:
            raise InputError(f"attention {value!r} names no attention kind; choose from {', '.join(KINDS)}",
                             "attention")
        for piece in pieces:
            if "=" in piece and ":" not in piece:
                if not specs or ":" not in specs[-1]:
                    after = f"; did you mean {specs[-1]}:{piece}?" if specs else ""
                    raise InputError(f"attention {value!r}: option {piece!r} has no kind before it (write "
                                     f"KIND:key=value){after}", "attention")
                specs[-1] += "," + piece
            else:
                specs.append(piece)
    return specs
