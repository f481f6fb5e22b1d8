"""Reading config.json fields: required and optional values, each checked, the missing one named."""

from __future__ import annotations

from ..units import InputError


class Fields:
    """Reads required and optional fields of one config dict, naming the missing one in the error."""

    def __init__(self, config: dict, where: str):
        self.config, self.where = config, where

    def need(self, key: str, kind=int):
        if key not in self.config or self.config[key] is None:
            raise InputError(f"{self.where}: config lacks required field {key!r}")
        return self._cast(key, self.config[key], kind)

    def get(self, key: str, default=None, kind=int):
        value = self.config.get(key)
        return default if value is None else self._cast(key, value, kind)

    def _cast(self, key, value, kind):
        if kind is bool:
            if not isinstance(value, bool):
                raise InputError(f"{self.where}: field {key!r} must be true or false, not {value!r}")
            return value
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 0:
                raise InputError(f"{self.where}: field {key!r} must be a non-negative whole number, not {value!r}")
            return int(value)
        return value

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
        """Explicit head_dim, else hidden_size / num_attention_heads."""
        return self.get("head_dim") or self.need("hidden_size") // self.need("num_attention_heads")


def common_fields(f: Fields, model_type: str, name: str, source: str) -> dict:
    """The Model arguments every family reads the same way (depth, width, vocabulary, positions)."""
    n_layers, d_model = f.need("num_hidden_layers"), f.need("hidden_size")
    n_heads = f.need("num_attention_heads")
    if min(n_layers, d_model, n_heads) == 0:
        raise InputError(f"{name}: num_hidden_layers, hidden_size and num_attention_heads must be positive")
    for key in ("vocab_size", "intermediate_size"):
        if key in f.config and f.get(key) == 0:
            raise InputError(f"{name}: {key} must be positive")
    return dict(name=name, n_layers=n_layers, d_model=d_model, vocab_size=f.need("vocab_size"),
                max_positions=f.get("max_position_embeddings"), architecture=model_type, source=source)


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
