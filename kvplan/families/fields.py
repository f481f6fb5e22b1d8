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
