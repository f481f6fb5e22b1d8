"""Timing and memory on the device the profiler runs on: CUDA events on a GPU, perf_counter on the CPU.

Every time reported is the median of `repeats` samples after warm-up. A sample of a short call (a decode
step) runs the call several times back to back and divides, so event resolution and launch gaps between
samples do not dominate it.
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Callable

import torch

from kvplan.units import InputError

SAMPLE_SECONDS = 0.005  # aim each timed sample at >= 5 ms of work
# A whole prefill's sample: a 2-layer prompt of 4k tokens takes ~7 ms, and one call a sample varied by up to 9%
# between validation runs on the same H100 (examples/validation-h100.md) where several calls a sample average it.
PREFILL_SAMPLE_SECONDS = 0.05


def pick_device(requested: str) -> torch.device:
    """'cuda' needs a visible GPU; otherwise one line says so (the CLI exits non-zero)."""
    if requested not in ("cuda", "cpu"):
        raise InputError(f"--device must be cuda or cpu, not {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise InputError("no CUDA GPU found (torch.cuda.is_available() is False); use --device cpu for a small CPU run")
    return torch.device(requested)


def local_gpu(device: torch.device):
    """The preset of the CUDA device, found through NVML, else through the name torch reports."""
    from dataclasses import replace

    from kvplan.gpu_detect import detect_gpu, preset_for_name
    from kvplan.hardware import GPUS

    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        return detect_gpu(index)
    except InputError as nvml_error:
        props = torch.cuda.get_device_properties(index)
        preset = preset_for_name(props.name)
        if preset is None:
            raise InputError(f"GPU {props.name!r} matches no preset ({nvml_error}); pass --gpu NAME or "
                             f"--hardware-profile FILE") from None
        return replace(GPUS[preset], memory_bytes=props.total_memory)


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU (as served); float32 on the CPU, where bf16 matmuls are slow and emulated."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    """Return freed blocks to the driver, so the next row starts from a clean allocator."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


POWER_CAPPED = 0x4  # NVML's clocks-event reason: clocks lowered to hold the power limit
SETTLE_SECONDS = 1.5  # longest wait for the clocks to come back after a power-capped burst


def settle(device: torch.device) -> float:
    """Wait (at most SETTLE_SECONDS) until the GPU no longer holds its clocks down for power, and return the
    seconds waited. A long prefill draws the power limit and leaves the SM clocks lowered for a while; a decode
    step timed then runs several percent slower than the same step in steady decoding (measured on an H200:
    1485-1815 MHz and +6% right after a 32k prefill, 1980 MHz and equal after 1 s). No wait without a GPU or
    without pynvml."""
    if device.type != "cuda":
        return 0.0
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device() if device.index is None else device.index)
    except Exception:  # noqa: BLE001 - no NVML here: nothing to wait on
        return 0.0
    began = time.monotonic()
    while time.monotonic() - began < SETTLE_SECONDS:
        try:
            capped = pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle) & POWER_CAPPED
        except Exception:  # noqa: BLE001 - a GPU or driver that does not report it: nothing to wait on
            break
        if not capped:
            break
        time.sleep(0.02)
    return time.monotonic() - began


def run_for(fn: Callable[[], object], device: torch.device, seconds: float) -> int:
    """Call fn again and again for `seconds` of wall time (synchronizing each call) and return the calls made:
    a step timed after this runs in the state a stream of the same steps keeps the GPU in."""
    began, calls = time.monotonic(), 0
    while time.monotonic() - began < seconds:
        fn()
        synchronize(device)
        calls += 1
    return calls


def allocated_bytes(device: torch.device) -> int | None:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None


def one_sample(fn: Callable[[], object], device: torch.device, inner: int) -> float:
    """Seconds per call of `inner` calls back to back."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / inner
    begin = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - begin) / inner


def inner_calls(first_seconds: float, sample_seconds: float = SAMPLE_SECONDS) -> int:
    """Calls per timed sample (1 to 1000) so that a sample holds at least sample_seconds of work."""
    return max(1, min(1000, int(sample_seconds / max(first_seconds, 1e-7))))


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1,
                   sample_seconds: float = SAMPLE_SECONDS) -> tuple[float, list[float]]:
    """(median seconds per call, all samples), each sample at least sample_seconds of calls. The first call sizes
    the inner loop of short calls; it is a warm-up (not kept) unless warmup=0, for calls already warmed by the
    caller."""
    first = one_sample(fn, device, 1)
    for _ in range(warmup - 1):
        first = one_sample(fn, device, 1)
    inner = inner_calls(first, sample_seconds)
    kept = [first] if warmup == 0 and inner == 1 else []
    samples = kept + [one_sample(fn, device, inner) for _ in range(max(repeats, 1) - len(kept))]
    return statistics.median(samples), samples
