"""Will a profile sweep fit the device? Each row's estimated bytes against the memory free now.

On the CPU a row that cannot fit is refused before any network is built, with the deepest `--layers` slice
that fits (the kernel would otherwise kill the whole process mid-build, losing the sweep). On CUDA an
out-of-memory error ends only its own row, recorded as does-not-fit (measured), so those rows still run and
the check only warns.
"""

from __future__ import annotations

import os
from dataclasses import replace

from kvplan.estimator import Estimator
from kvplan.units import InputError, format_gib

from .sweep import Sweep, plan_rows

# A suggested --layers slice leaves this share of the free memory for what the estimate does not count
# (the torch runtime, allocator rounding, the Python process itself).
SLICE_HEADROOM = 0.8


def available_bytes(device) -> int | None:
    """Memory a new network can take now: free GPU memory on CUDA, the kernel's MemAvailable on the CPU
    (free pages, if /proc/meminfo is missing); None where the system does not say."""
    if device.type == "cuda":
        import torch

        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the kernel writes kB, meaning KiB
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def row_bytes(est: Estimator, batch: int, context: int) -> int:
    """What building and prefilling one row holds at its peak, by the estimate: weights + cache + prefill peak."""
    return (est.weights_bytes_per_gpu + est.kv_cache_bytes_per_gpu(batch, context)
            + est.activation_bytes_per_gpu(batch, context))


def check_memory(sweep: Sweep) -> str | None:
    """Before any network is built, set each row's estimated bytes against the device's free memory: on the
    CPU raise InputError for a row that cannot fit (suggesting a slice); on CUDA return a warning naming how
    many rows may not fit; None when all fit or the system does not say what is free."""
    device = sweep.settings.device
    free = available_bytes(device)
    if free is None:
        return None
    too_large = [(identity, est, need) for identity, est, _ in plan_rows(sweep)
                 if (need := row_bytes(est, identity["batch"], identity["context"])) > free]
    if not too_large:
        return None
    if device.type == "cuda":
        return (f"{len(too_large)} row(s) need more than the {format_gib(free)} GiB free on the GPU by the estimate; "
                f"they run anyway and any that runs out of memory is recorded as does not fit (measured)")
    identity, est, need = max(too_large, key=lambda item: item[2])
    batch, context = identity["batch"], identity["context"]
    layers = layers_that_fit(sweep, int(free * SLICE_HEADROOM))
    advice = (f"profile a slice with --layers {layers}" if layers else
              "even one layer does not fit: lower --batch or --context")
    raise InputError(
        f"{sweep.model} ({identity['attention']}, {identity['layers']} layers) at batch {batch} x context {context} "
        f"needs about {format_gib(need)} GiB on the CPU (weights {format_gib(est.weights_bytes_per_gpu)} + cache "
        f"{format_gib(est.kv_cache_bytes_per_gpu(batch, context))} + prefill peak "
        f"{format_gib(est.activation_bytes_per_gpu(batch, context))} GiB), more than the {format_gib(free)} GiB "
        f"available: {advice}")


def layers_that_fit(sweep: Sweep, budget: int) -> int:
    """The deepest slice whose every row fits in `budget` bytes by the estimate (0: not even one layer)."""
    deepest = min(sweep.layers or 10**9, max(identity["full_layers"] for identity, _, _ in plan_rows(sweep)))
    for layers in range(deepest - 1, 0, -1):
        if all(row_bytes(est, identity["batch"], identity["context"]) <= budget
               for identity, est, _ in plan_rows(replace(sweep, layers=layers))):
            return layers
    return 0
