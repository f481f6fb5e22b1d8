"""Reading config.json fields: required and optional values, each checked, the missing one named."""

from __future__ import annotations

import math

from ..units import InputError


MAX_FIELD = 2**40  # whole-number fields past this describe no model (the widest hidden sizes are about 2^15)
MAX_LAYERS = 2**16  # per-layer tuples are built; published models have at most a few hundred layers


class Fields:
    """Reads required and optional fields of one config dict, naming the missing or malformed one in the error.

    Whole-number fields must be finite whole numbers (5 or 5.0, not 5.5, NaN or "5") from `minimum` (required
    fields: 1; optional ones: 0 unless the call says otherwise) to MAX_FIELD.
    """

    def __init__(self, config: dict, where: str):
        self.config, self.where = config, where

    def need(self, key: str, kind=int, minimum: int = 1, maximum: int = MAX_FIELD):
        if key not in self.config or self.config[key] is None:
            raise InputError(f"{self.where}: config lacks required field {key!r}")
        return self._cast(key, self.config[key], kind, minimum, maximum)

    def get(self, key: str, default=None, kind=int, minimum: int = 0, maximum: int = MAX_FIELD):
        value = self.config.get(key)
        return default if value is None else self._cast(key, value, kind, minimum, maximum)

    def _cast(self, key, value, kind, minimum: int, maximum: int):
        if kind is bool:
            if not isinstance(value, bool):
                raise InputError(f"{self.where}: field {key!r} must be true or false, not {value!r}")
            return value
        if kind is int:
            if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                    or value != int(value)):
                raise InputError(f"{self.where}: field {key!r} must be a whole number, not {value!r}")
            if value < minimum:
                wanted = "positive" if minimum == 1 else f"at least {minimum}"
                raise InputError(f"{self.where}: field {key!r} must be {wanted}, not {value!r}")
            if value > maximum:
                raise InputError(f"{self.where}: field {key!r} is beyond {maximum:,}: {value!r}")
            return int(value)
        if kind is str and not isinstance(value, str):
            raise InputError(f"{self.where}: field {key!r} must be a string, not {value!r}")
        return value

    def layer_ids(self, key: str, n_layers: int) -> tuple[int, ...]:
        """A list of 0-based layer indices (mlp_only_layers, moe_layers); absent or null: none."""
        value = self.config.get(key)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise InputError(f"{self.where}: field {key!r} must be a list of layer indices, not {value!r}")
        return tuple(self._cast(f"{key}[{i}]", item, int, 0, n_layers - 1) for i, item in enumerate(value))

    def storage(self, key: str) -> str | None:
        """A dtype field ("float32", "bfloat16", ...) as a kvplan.dtypes format name, None where absent."""
        names = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
        value = self.config.get(key)
        if value is None:
            return None
        if value not in names:
            raise InputError(f"{self.where}: field {key!r} must be one of {', '.join(names)}, not {value!r}")
        return names[value]

    def head_dim(self) -> int:
        """Explicit head_dim, else hidden_size / num_attention_heads (rounded down, as transformers does)."""
        explicit = self.get("head_dim", minimum=1)
        if explicit:
            return explicit
        hidden, heads = self.need("hidden_size"), self.need("num_attention_heads")
        if hidden < heads:
            raise InputError(f"{self.where}: hidden_size ({hidden}) / num_attention_heads ({heads}) gives head_dim 0; "
                             f"a config with fewer channels than heads must give head_dim")
        return hidden // heads


def common_fields(f: Fields, model_type: str, name: str, source: str) -> dict:
    """The Model arguments every family reads the same way (depth, width, vocabulary, positions)."""
    n_layers, d_model = f.need("num_hidden_layers", maximum=MAX_LAYERS), f.need("hidden_size")
    f.need("num_attention_heads")
    f.get("intermediate_size", minimum=1)
    return dict(name=name, n_layers=n_layers, d_model=d_model, vocab_size=f.need("vocab_size"),
                max_positions=f.get("max_position_embeddings", minimum=1), architecture=model_type, source=source)


def moe_feed_forward(f: Fields, n_experts: int, active_key: str, dense_intermediate: int, *, n_dense_layers: int = 0,
                     moe_step: int = 1, dense_layer_ids: tuple[int, ...] = (), n_shared_experts: int = 0,
                     shared_intermediate: int = 0, moe_intermediate_key: str = "moe_intermediate_size"):
    """A FeedForward with `n_experts` routed experts (none: dense), the top-k read from `active_key`."""
    from ..model import FeedForward

    if not n_experts:
        return FeedForward(dense_intermediate)
    active = f.need(active_key)
    if not 0 < active <= n_experts:
        raise InputError(f"{f.where}: {active_key} ({active}) must be between 1 and the number of experts ({n_experts})")
    if moe_step < 1:
        raise InputError(f"{f.where}: the MoE layer step must be at least 1, not {moe_step}")
    return FeedForward(intermediate=dense_intermediate, n_experts=n_experts, n_active_experts=active,
                       n_shared_experts=n_shared_experts, moe_intermediate=f.need(moe_intermediate_key),
                       n_dense_layers=n_dense_layers, moe_step=moe_step, dense_layer_ids=tuple(dense_layer_ids),
                       shared_intermediate=shared_intermediate)


def layer_spans(f: Fields, n_layers: int, spans: dict[str, str | None]) -> tuple[int | None, ...] | None:
    """Per-layer window (or chunk) from `layer_types`, None where the config has no such list.

    `spans` maps each layer type the family knows to the field holding its span in tokens (None: full
    attention); a span field is needed only when some layer has that type, so a config whose layers are all
    full attention may leave sliding_window null or out (as transformers 5 writes Qwen2 and Qwen3).
    """
    layer_types = listed_layer_types(f, n_layers, spans)
    if layer_types is None:
        return None
    sizes = {kind: f.need(key) if key else None for kind, key in spans.items() if kind in layer_types}
    return tuple(sizes[kind] for kind in layer_types)


def listed_layer_types(f: Fields, n_layers: int, known) -> list[str] | None:
    """The config's layer_types, one of `known` per layer; None where the config has no such list."""
    layer_types = f.config.get("layer_types")
    if not (isinstance(layer_types, list) and layer_types):
        return None
    if len(layer_types) != n_layers:
        raise InputError(f"{f.where}: layer_types has {len(layer_types)} entries for {n_layers} layers")
    unknown = sorted({str(kind) for kind in layer_types} - set(known))
    if unknown:
        raise InputError(f"{f.where}: layer_types holds {', '.join(unknown)}; kvplan knows {' and '.join(known)} "
                         f"for model_type {f.config.get('model_type')!r}")
    return layer_types


SLIDING_OR_FULL = {"sliding_attention": "sliding_window", "full_attention": None}


def every_layer_window(f: Fields, n_layers: int) -> tuple[int | None, ...]:
    """One sliding_window on every layer when set (Mistral, Mixtral, Phi-3), from layer_types when listed.

    A window at least max_position_embeddings long never limits attention, so it counts as none
    (Phi-3.5-mini's 262144 over 131072 positions).
    """
    listed = layer_spans(f, n_layers, SLIDING_OR_FULL)
    if listed is not None:
        return listed
    window, positions = f.get("sliding_window"), f.get("max_position_embeddings")
    if not window or (positions and window >= positions):
        return (None,) * n_layers
    return (window,) * n_layers
