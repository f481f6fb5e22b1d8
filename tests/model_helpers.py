"""Checks shared by the model, tensor-parallel and kind-registry tests, on float64 models on the CPU: cached
decode against the full forward, real cache bytes and counted FLOPs against the Estimator, and one model's
attention layers split over tensor-parallel ranks in one process (no torch.distributed)."""

import threading

import torch

from kvplan.dtypes import FORMATS
from kvplan.estimator import Deployment, Estimator
from kvplan.hardware import get_gpu
from kvplan.model import Model
from kvplan.models import build
from kvplan.profilers.distributed import build_layers, full_layer_states, shard_layers
from kvplan.profilers.flops import count_flops, counted_prefill_flops

VOCAB = 61
F64 = torch.float64


def estimator(desc: Model, **deployment) -> Estimator:
    return Estimator(desc, Deployment(get_gpu("h100-sxm"), **deployment))


def f64(desc, max_batch=2, max_context=16, seed=0):
    return build(desc, max_batch=max_batch, max_context=max_context, dtype=F64, kv_dtype=None, seed=seed)


def tokens(batch, length, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def assert_close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def decode_logits(net, toks, prompt):
    """Prefill toks[:, :prompt], then decode the rest one token at a time: logits of every position from prompt-1."""
    out = [net.prefill(toks[:, :prompt])]
    for pos in range(prompt, toks.size(1)):
        out.append(net.decode(toks[:, pos:pos + 1], torch.tensor([pos])))
    return torch.stack(out, dim=1)


def assert_cached_decode_equals_forward(desc: Model) -> None:
    """Prefill then cached decode give the logits of one uncached forward pass, twice in the same caches."""
    net = f64(desc)
    toks = tokens(2, 16)
    reference = net.forward(toks)  # [B, T, V], no cache
    # 6-token prompt, then 10 decode steps: every windowed ring (4..7 slots) wraps at least once.
    assert_close(decode_logits(net, toks, 6), reference[:, 5:])
    net.reset_cache()  # a second sequence in the same caches gives the same answer
    assert_close(decode_logits(net, toks, 3), reference[:, 2:])


def assert_cache_bytes_equal_the_estimate(desc: Model, kv_dtype: str, max_batch: int = 3,
                                          max_context: int = 24) -> None:
    """The built model's cache tensors hold Estimator.kv_cache_bytes, allocated and live at several contexts (the
    deployment computes in fp32, as the model does: recurrent state is held in the compute dtype)."""
    net = build(desc, max_batch=max_batch, max_context=max_context, dtype=torch.float32, kv_dtype=kv_dtype)
    est = estimator(desc, kv_format=FORMATS[kv_dtype], activation_format=FORMATS["fp32"])
    assert net.cache_bytes_allocated() == est.kv_cache_bytes(max_batch, max_context)
    assert net.cache_bytes_allocated() == sum(t.numel() * t.element_size() for t in net.cache_tensors())
    for context in (1, 5, 8, 13, 24):
        assert net.cache_bytes_live(context) == est.kv_cache_bytes(max_batch, context)


def assert_counted_prefill_flops(desc: Model, batch: int = 2, prompt: int = 14) -> None:
    """FlopCounterMode's count of a prefill equals what profilers.flops says it counts (kvplan.profilers.flops
    counts scaled_dot_product_attention as the whole q x k rectangle it is handed, also on the CPU)."""
    net = f64(desc, max_context=prompt)
    toks = tokens(batch, prompt)
    assert count_flops(lambda: net.prefill(toks)) == counted_prefill_flops(estimator(desc), batch, prompt)


def decode_step_flops(desc: Model, batch: int, context: int) -> int:
    """FlopCounterMode's count of the decode step at position context - 1 after a (context - 1)-token prefill,
    in caches of `context` tokens."""
    net = f64(desc, max_context=context)
    toks = tokens(batch, context)
    net.prefill(toks[:, :context - 1])
    return count_flops(lambda: net.decode(toks[:, context - 1:], torch.tensor([context - 1])))


class ThreadSum:
    """An in-place sum of one tensor over `ranks` threads, each calling `for_rank(r)` with its own tensor in the
    same order: a stand-in, inside one process, for torch.distributed.all_reduce in the middle of a layer."""

    def __init__(self, ranks: int):
        self.parts, self.barrier = [None] * ranks, threading.Barrier(ranks, timeout=60)

    def for_rank(self, rank: int):
        def all_reduce(t: torch.Tensor) -> None:
            self.parts[rank] = t.clone()
            self.barrier.wait()
            total = sum(self.parts)  # the same order on every rank: the same sum
            self.barrier.wait()
            t.copy_(total)
        return all_reduce


def _prefill_summed(layers: list, x: torch.Tensor) -> torch.Tensor:
    """The sum of the ranks' layers' prefill outputs on x; a layer with a collective inside the mixer
    (`mid_all_reduce`, Mamba's x_proj) runs its ranks in threads joined by a ThreadSum."""
    if not hasattr(layers[0], "mid_all_reduce"):
        return sum(layer.prefill(x) for layer in layers)
    group, outputs = ThreadSum(len(layers)), [None] * len(layers)

    def run(rank: int) -> None:
        layers[rank].mid_all_reduce = group.for_rank(rank)
        outputs[rank] = layers[rank].prefill(x)

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(len(layers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(outputs)


def shard_outputs(desc: Model, tp: int, ranks, length: int = 8, seed: int = 3):
    """Per mixer of desc (attention and recurrent layers), on one input [1, length, d_model]: the sum over `ranks`
    of the tp-way shards' prefill outputs (before the all-reduce of the outputs; an all-reduce inside a mixer runs
    over `ranks`), and the unsharded layer's output."""
    x = torch.randn(1, length, desc.d_model, dtype=F64, generator=torch.Generator().manual_seed(seed + 1))
    full = build_layers(desc, [kind for kind, _ in desc.mixers()], full_layer_states(desc, F64, seed), 1, length,
                        F64, F64, "cpu")
    shards = [shard_layers(desc, tp, rank, 1, length, F64, F64, "cpu", seed) for rank in ranks]
    return [(_prefill_summed([layers[i] for layers in shards], x), layer.prefill(x)) for i, layer in enumerate(full)]


def decode_graph(net, token, position):
    """A CUDA graph of one decode step of `net`, captured after a warm-up off the default stream (which writes
    `position`; each replay rewrites it): (graph, static token [B, 1], static position [1], static logits [B, V]).
    Copy a token and a position into the static tensors, then replay."""
    static_tok, static_pos = token.clone(), position.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        net.decode(static_tok, static_pos)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = net.decode(static_tok, static_pos)
    return graph, static_tok, static_pos, static_out
