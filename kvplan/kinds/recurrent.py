"""Recurrent sequence mixers (linear attention, state-space layers): a per-sequence state constant in context.

A recurrent layer caches nothing per token. Each sequence holds, per layer, its recurrent state (one matrix per
head: Gated DeltaNet's key dim x value dim, Mamba-2's head dim x state size; Mamba-1 a state_size vector per
channel) and the last conv_kernel - 1 inputs of its short causal convolution. The recurrent state is stored in
`state_dtype` when the kind names one (a config's mamba_ssm_dtype), else in the model's compute dtype, as vLLM's
mamba cache dtype "auto" does; the convolution's inputs always in the compute dtype.

Prefill runs the chunked form: chunks of `chunk` tokens (the last one shorter where the prompt ends),
attention-like products inside each chunk and the state carried from chunk to chunk. Decode runs one step of the recurrence
on the held state, reading the whole state and writing it back.

FLOPs follow kvplan.kinds.base (matrix products, multiply-add = 2) and count the short convolution too,
2 x channels x kernel per token, as PyTorch's FlopCounterMode counts conv1d.
"""

from __future__ import annotations

from typing import ClassVar

from ..dtypes import FORMATS, StorageFormat
from ..units import whole
from .base import AttentionKind


class RecurrentKind(AttentionKind):
    """A sequence mixer with no per-token cache (see the module docstring). Subclasses set conv_kernel, chunk and
    state_dtype fields and the per-kind formulas below."""

    recurrent: ClassVar[bool] = True
    # --attention names whose re-cast keeps the attention on every Nth layer unless attention_every says otherwise
    recast_attention_every: ClassVar[dict[str, int]] = {}
    conv_kernel: int
    chunk: int
    state_dtype: str | None

    # --- nothing per token --------------------------------------------------------------------------------------
    @property
    def rope_dim(self) -> int:
        return 0  # no positional rotation: order comes from the recurrence

    def cache_vectors(self, tp: int = 1) -> tuple[tuple[int, int], ...]:
        return ()

    def pair_flops(self, phase: str) -> int:
        return 0

    def decode_scratch_elements(self, cached_tokens: int) -> int:
        return 0

    # --- the per-sequence state -------------------------------------------------------------------------------
    def state_elements(self, tp: int = 1) -> int:
        """Elements of the recurrent state of one sequence in one layer on one of `tp` GPUs."""
        raise NotImplementedError

    def conv_channels(self, tp: int = 1) -> int:
        """Channels of the short causal convolution on one of `tp` GPUs."""
        raise NotImplementedError

    def conv_state_elements(self, tp: int = 1) -> int:
        """The convolution's last conv_kernel - 1 inputs per channel."""
        return self.conv_channels(tp) * (self.conv_kernel - 1)

    def state_bytes(self, compute: StorageFormat, tp: int = 1) -> int:
        """Bytes one sequence holds in one layer on one of `tp` GPUs: the recurrent state in state_dtype (None:
        the `compute` format) and the convolution's inputs in `compute`."""
        state_format = FORMATS[self.state_dtype] if self.state_dtype else compute
        return whole(self.state_elements(tp) * state_format.bytes_per_element
                     + self.conv_state_elements(tp) * compute.bytes_per_element)

    # --- FLOPs of one sequence in one layer --------------------------------------------------------------------
    def chunk_flops(self, length: int) -> int:
        """Matrix-product FLOPs of one chunk of `length` tokens, every head, state carried in and out included."""
        raise NotImplementedError

    def step_flops(self) -> int:
        """Matrix-product FLOPs of one decode step on the state, every head."""
        raise NotImplementedError

    def conv_flops(self) -> int:
        """The short convolution per token: 2 x channels x kernel."""
        return 2 * self.conv_channels() * self.conv_kernel

    def chunk_solve_flops(self, length: int) -> int:
        """Part of chunk_flops spent in triangular solves (none unless a kind says so)."""
        return 0

    def _over_chunks(self, tokens: int, per_chunk) -> int:
        """per_chunk(length) summed over the chunks of `tokens` tokens: whole chunks, then the rest."""
        whole_chunks, rest = divmod(tokens, self.chunk)
        return whole_chunks * per_chunk(self.chunk) + (per_chunk(rest) if rest else 0)

    def solve_flops(self, tokens: int) -> int:
        return self._over_chunks(tokens, self.chunk_solve_flops)

    def prefill_flops(self, tokens: int) -> int:
        """Prefill of `tokens` tokens onto any held state: its chunks and the convolution of every token."""
        return self._over_chunks(tokens, self.chunk_flops) + tokens * self.conv_flops()

    def decode_flops(self) -> int:
        return self.step_flops() + self.conv_flops()

