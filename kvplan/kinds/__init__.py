"""Attention kinds: one module per kind behind one interface (base.AttentionKind), and their registry.

Everything that chooses behaviour by kind (re-casts, CLI help, recommend, the torch models, the distributed
profiler, validation) reads KINDS or RECAST_NAMES here rather than naming kinds itself.
"""

from __future__ import annotations

from .base import AttentionKind, keys_attended_sum
from .dense import DenseAttention
from .dsa import DSA
from .gdn import GatedDeltaNet
from .mamba import Mamba
from .mamba2 import Mamba2
from .mla import MLA
from .recurrent import RecurrentKind
from .tpa import TPA

Attention = AttentionKind

KINDS: dict[str, type[AttentionKind]] = {cls.name: cls
                                         for cls in (DenseAttention, MLA, TPA, DSA, GatedDeltaNet, Mamba2, Mamba)}

# --attention NAME -> the kind it builds (mha, mqa and gqa all build DenseAttention).
RECAST_NAMES: dict[str, type[AttentionKind]] = {name: cls for cls in KINDS.values() for name in cls.recast_names}

__all__ = ["Attention", "AttentionKind", "DenseAttention", "MLA", "TPA", "DSA", "GatedDeltaNet", "Mamba", "Mamba2",
           "RecurrentKind", "KINDS", "RECAST_NAMES", "keys_attended_sum"]
