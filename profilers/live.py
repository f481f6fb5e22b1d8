"""Peak bytes of the tensors a call creates, counted as PyTorch hands them out, on any device (the CPU keeps no
allocator statistics): each new storage counted once, from the operation that makes it until the last tensor
viewing it is freed. Weights, buffers and inputs made before the call are not counted, nor the workspaces a
kernel allocates for itself, nor the allocator's rounding of blocks.

    with LiveBytes() as live:
        layer.prefill(x)
    live.peak  # bytes
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.sizes: dict[int, int] = {}  # storage address -> bytes
        self.holders: dict[int, int] = {}  # storage address -> live tensors viewing it
        self.now = self.peak = 0

    def _release(self, key: int) -> None:
        self.holders[key] -= 1
        if not self.holders[key]:
            self.now -= self.sizes.pop(key)
            del self.holders[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {a.untyped_storage().data_ptr() for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor) or getattr(tensor, "_live_counted", False):
                continue
            key = tensor.untyped_storage().data_ptr()
            if key in self.sizes:  # a new view of a storage made inside
                self.holders[key] += 1
            elif key in given:  # in place, or a view of a tensor made outside
                continue
            else:
                self.sizes[key], self.holders[key] = tensor.untyped_storage().nbytes(), 1
                self.now += self.sizes[key]
                self.peak = max(self.peak, self.now)
            tensor._live_counted = True
            weakref.finalize(tensor, self._release, key)
        return out
