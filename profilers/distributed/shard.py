"""Which slice of each attention layer one tensor-parallel rank holds.

The kind says what one GPU runs (AttentionKind.check_shardable, .shard); its torch layer says which rows and
columns of the full layer's weights that is (the layer class's shard_state classmethod, kvplan.models).
"""

from __future__ import annotations

import torch

from kvplan.kinds import AttentionKind
from kvplan.models.transformer import layer_class
from kvplan.units import InputError


def shard_spec(spec: AttentionKind, tp: int) -> AttentionKind:
    """The attention one of `tp` GPUs runs; InputError when the layer does not split over them."""
    reason = spec.check_shardable(tp)
    if reason:
        raise InputError(reason)
    return spec.shard(tp)


def shard_state(spec: AttentionKind, state: dict[str, torch.Tensor], tp: int, rank: int) -> dict[str, torch.Tensor]:
    """Rank `rank`'s slice of a full layer's weights (the state_dict of the unsharded layer of kind `spec`);
    what the kind replicates is copied whole."""
    shard_spec(spec, tp)
    sliced = layer_class(spec).shard_state(spec, state, tp, rank)
    return {name: value.contiguous() for name, value in sliced.items()}
