"""Measure one (model, batch, context) on real tensors: cache bytes, prefill peak memory, latencies, FLOPs.

The network is built fresh for each row with its cache sized for exactly `batch` x `context`, so the
allocated cache is the one the estimate describes and decode reads a cache of that length.
Prefill runs the whole `context`-token prompt; the decode step writes position context-1 (the context-th
token, as Estimator.decode_step defines it) over the filled cache, again and again for timing, once the
GPU's clocks are back from the prefill's power draw (timing.settle) and after DECODE_STEADY_SECONDS of the same
steps (on the H100, steps timed right after a 32k or 128k prefill ran 11-18% slower than with no prefill before
them, even once the power cap had lifted: examples/validation-h100.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvplan.model import Model

from .flops import count_flops
from .timing import PREFILL_SAMPLE_SECONDS, allocated_bytes, free_memory, median_seconds, run_for, settle, synchronize


DECODE_STEADY_SECONDS = 0.3  # decode steps run before the timed ones (a GPU only)


@dataclass
class Settings:
    device: torch.device
    dtype: torch.dtype
    repeats: int = 5
    cuda_graph: bool = True
    count_flops: bool = True
    seed: int = 0


def build_network(desc: Model, batch: int, context: int, settings: Settings, kv_dtype: str):
    """kvplan.models.build, looked up when called (so `kvplan estimate` never imports torch, and tests can
    replace it)."""
    from kvplan.models import build

    return build(desc, max_batch=batch, max_context=context, dtype=settings.dtype, device=str(settings.device),
                 kv_dtype=kv_dtype, seed=settings.seed)


def graph_replay(step):
    """(call, how): a CUDA graph replay of `step` (warmed up on a side stream, as capture requires), so timing
    sees the GPU's work, not the host's launches; the eager step where capture fails."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        return graph.replay, "cuda graph"
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - an op that cannot be captured: time it eagerly instead
        torch.cuda.synchronize()
        return step, f"eager (graph capture failed: {type(error).__name__})"


def _decode_callable(net, tokens: torch.Tensor, position: torch.Tensor, settings: Settings):
    """(call, how): a CUDA graph replay of one decode step where capture works, else the eager step."""
    def step():
        return net.decode(tokens, position)

    if settings.device.type != "cuda" or not settings.cuda_graph:
        return step, "eager"
    if not getattr(net, "graph_safe", True):
        return step, "eager (MoE routing is read on the host)"
    return graph_replay(step)


def _prefill(net, tokens: torch.Tensor, settings: Settings, out: dict) -> None:
    """Peak memory above weights + cache (CUDA) and median seconds of the whole prompt's prefill."""
    device = settings.device
    warm = net.prefill(tokens)  # warm-up: kernels load, cuBLAS workspaces settle before the peak is read
    del warm
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        logits = net.prefill(tokens)
        synchronize(device)
        out["prefill_peak_bytes_measured"] = torch.cuda.max_memory_allocated(device) - base
        del logits
    out["prefill_seconds_measured"], _ = median_seconds(lambda: net.prefill(tokens), device, settings.repeats, 0,
                                                        PREFILL_SAMPLE_SECONDS)


def measure_row(desc: Model, batch: int, context: int, kv_dtype: str, settings: Settings, out: dict) -> None:
    """Fill `out` with measured figures as they come, and `out["phase"]` with the step under way, so an
    out-of-memory error leaves the figures measured before it and says where it struck.

    A prefill that runs out of memory sets out["prefill_oom"] and the decode step is still measured: its
    cost does not depend on what the cache holds (every slot is read, and DSA's indexer scores every key), so
    a cache left unfilled times the same as a filled one.
    """
    device = settings.device
    gen = torch.Generator(device="cpu").manual_seed(settings.seed)
    out["phase"] = "build"
    before = allocated_bytes(device)
    net = build_network(desc, batch, context, settings, kv_dtype)
    synchronize(device)
    out["cache_bytes_measured"] = int(net.cache_bytes_allocated())
    out["cache_live_bytes_measured"] = int(net.cache_bytes_live(context))
    out["weights_bytes_measured"] = sum(p.numel() * p.element_size() for p in net.parameters())
    if before is not None:
        out["resident_bytes_measured"] = allocated_bytes(device) - before
    tokens = torch.randint(0, desc.vocab_size, (batch, context), generator=gen).to(device)

    with torch.inference_mode():
        out["phase"] = "prefill"
        try:
            _prefill(net, tokens, settings, out)
        except (torch.cuda.OutOfMemoryError, MemoryError) as error:
            out["prefill_oom"] = str(error).splitlines()[0] if str(error) else type(error).__name__
        if "prefill_oom" in out:  # outside the except block: the failed prefill's tensors are released now
            free_memory(device)

        out["phase"] = "decode"
        step_tokens = torch.randint(0, desc.vocab_size, (batch, 1), generator=gen).to(device)
        position = torch.tensor([context - 1], dtype=torch.long, device=device)
        # The prefill's power draw leaves the clocks lowered for a while: tune and time decode after it passes,
        # and after a stretch of decode steps, so the samples see the GPU as steady decoding keeps it.
        settle(device)
        call, how = _decode_callable(net, step_tokens, position, settings)
        out["decode_mode"] = how
        settle(device)
        if device.type == "cuda":
            run_for(call, device, DECODE_STEADY_SECONDS)
        out["decode_seconds_measured"], _ = median_seconds(call, device, settings.repeats, 2)
        del call

    if settings.count_flops:
        out["phase"] = "flops"
        if "prefill_oom" not in out:
            out["prefill_flops_counted_measured"] = count_flops(lambda: net.prefill(tokens))
        out["decode_flops_measured"] = count_flops(lambda: net.decode(step_tokens, position))
    out["phase"] = "done"
