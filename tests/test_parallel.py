"""Tensor, pipeline, data-parallel attention and expert parallelism: memory per GPU and communication,
each against arithmetic written out here from the published configs and the GPU presets' link figures."""

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest

from kvplan.api import estimators
from kvplan.estimator import Estimator
from kvplan.kinds import DenseAttention
from kvplan.model import FeedForward, Model
from kvplan.parallel import all_to_all_seconds
from kvplan.units import InputError

BF16, FP8 = 2, 1
NETWORK_LATENCY = 10e-6  # the assumption kvplan.parallel states (across nodes)
# The H100 preset's communication kernel (kvplan.hardware.KERNELS, from aiconfigurator's tables): 0.918 of the
# link's bandwidth (NCCL all-reduce, large messages) and 4.7 us per collective inside a node (vLLM's custom
# all-reduce); the H800 borrows the H100's figures. All-to-all: NCCL's on 2 H100s (examples/ep2-h100.csv),
# 53.2 us per call and 0.642 of the link; across nodes the network at the all-reduce's fraction.
LINK_FRACTION, COLLECTIVE_SECONDS = 0.918, 4.7e-6
A2A_FRACTION, A2A_SECONDS = 0.642, 53.2e-6


def est(model, **options):
    (estimator,) = estimators(model, **options)
    return estimator


def no_compute(estimator):
    """Communication alone: the roofline terms made negligible by an absurdly fast GPU."""
    gpu = replace(estimator.deployment.gpu, bf16_flops=1e30, fp8_flops=1e30, bandwidth_bytes_per_s=1e30)
    return Estimator(estimator.model, replace(estimator.deployment, gpu=gpu))


# --- communication --------------------------------------------------------------------------------------

def test_tp_all_reduce_by_hand():
    # llama-3.1-8b, 2 H100s: two ring all-reduces per layer of the hidden state of every prompt token
    e = est("llama-3.1-8b", gpus=2)
    message = 4096 * 4096 * BF16  # 4096 tokens x d_model 4096 x bf16
    per_all_reduce = 2 * (2 - 1) / 2 * message / (450e9 * LINK_FRACTION) + COLLECTIVE_SECONDS  # NVLink 450 GB/s one way
    assert e.communication_seconds(1, 4096) == pytest.approx(2 * 32 * per_all_reduce, rel=1e-12)


def test_tp_across_nodes_uses_the_network():
    e = est("llama-3.1-70b", gpus=16, gpus_per_node=8)
    message = 8 * 8192 * BF16  # decode: 8 tokens x d_model 8192
    per_all_reduce = 2 * 15 / 16 * message / (50e9 * LINK_FRACTION) + NETWORK_LATENCY  # 400 Gb/s NIC per GPU
    assert e.communication_seconds(8, 1) == pytest.approx(2 * 80 * per_all_reduce, rel=1e-12)


def test_ep_dispatch_and_combine_by_hand_inside_one_node():
    # deepseek-v3 on 8 H800s, DP8/EP8, decode of 8 sequences: one token per GPU, sent to its 8 experts
    e = est("deepseek-v3", gpu="h800", gpus=8, dp=8, ep=8)
    copies = 1 * 8 * 7168  # tokens per GPU x top-8 x d_model
    dispatch = copies * (1 + 4 / 128) * 7 / 8  # fp8 with a scale per 128; 7 of 8 destinations elsewhere
    combine = copies * 2 * 7 / 8  # bf16 back
    link = 200e9 * A2A_FRACTION  # H800 NVLink 400 GB/s both ways
    per_moe_layer = (dispatch / link + A2A_SECONDS) + (combine / link + A2A_SECONDS)
    assert e.communication_seconds(8, 1) == pytest.approx((61 - 3) * per_moe_layer, rel=1e-12)


def test_ep_across_nodes_splits_between_link_and_network():
    e = est("deepseek-v3", gpu="h800", gpus=16, dp=16, ep=16)
    copies = 2 * 8 * 7168  # 32 sequences over 16 ranks: 2 tokens per GPU
    per_layer = 0.0
    for element_bytes in (1 + 4 / 128, 2):
        sent = copies * element_bytes
        inside, across = sent * 7 / 16, sent * 8 / 16  # 7 other GPUs of its node, 8 of the other node
        per_layer += max(inside / (200e9 * A2A_FRACTION), across / (50e9 * LINK_FRACTION)) + max(A2A_SECONDS,
                                                                                                   NETWORK_LATENCY)
    assert e.communication_seconds(32, 1) == pytest.approx(58 * per_layer, rel=1e-12)
    assert all_to_all_seconds(1e6, 1, 8, 1e9, 1e9) == 0.0


def test_pp_sends_by_hand():
    e = est("llama-3.1-8b", gpus=4, pp=4)
    message = 2 * 1000 * 4096 * BF16  # 2 sequences x 1000 tokens x d_model
    assert e.communication_seconds(2, 1000) == pytest.approx(3 * (message / (450e9 * LINK_FRACTION) + COLLECTIVE_SECONDS),
                                                                  rel=1e-12)


def test_overlap_takes_the_larger_of_compute_and_communication():
    plain = est("deepseek-v3", gpu="h800", gpus=16, dp=16, ep=16, weight_dtype="fp8")
    hidden = est("deepseek-v3", gpu="h800", gpus=16, dp=16, ep=16, weight_dtype="fp8", overlap=True)
    comm = plain.communication_seconds(64, 1)
    _, summed = plain.decode_step(64, 4096)
    _, overlapped = hidden.decode_step(64, 4096)
    assert summed == pytest.approx(max(summed - comm, comm) + min(summed - comm, comm))
    assert overlapped == pytest.approx(max(summed - comm, comm))


# --- memory per GPU -------------------------------------------------------------------------------------

def test_dp_splits_the_cache_not_the_weights_dense():
    one, two = est("llama-3.1-8b"), est("llama-3.1-8b", gpus=2, dp=2)
    assert two.weights_bytes_per_gpu == one.weights_bytes_per_gpu
    assert two.weights_bytes_all_gpus == 2 * one.weights_bytes_all_gpus
    # 9 sequences over 2 ranks: the fuller rank holds 5, at 128 KiB per token
    assert two.kv_cache_bytes_per_gpu(9, 4096) == 5 * 4096 * 32 * 2 * 8 * 128 * BF16
    assert two.kv_cache_bytes(9, 4096) == one.kv_cache_bytes(9, 4096)
    row = two.row(9, 4096)
    assert (row["gpus"], row["tp"], row["dp"], row["ep"]) == (2, 1, 2, 1)


def mla_attention_params():
    """DeepSeek-V3 attention per layer (published config): q down 7168 -> 1536, q up 1536 -> 128 x 192,
    kv down 7168 -> 512 + 64, kv up 512 -> 128 x (128 + 128), output 128 x 128 -> 7168, norms 1536 + 512."""
    return (7168 * 1536 + 1536 * 128 * 192 + 7168 * 576 + 512 * 128 * 256 + 128 * 128 * 7168 + 1536 + 512)


def test_ep_holds_whole_experts_mla_moe():
    # deepseek-v3, DP32/EP32, fp8 weights: each GPU holds the whole attention, the 3 dense layers, the shared
    # expert and router, 256 / 32 = 8 routed experts per MoE layer, and the (vocabulary) embeddings
    e = est("deepseek-v3", gpu="h800", gpus=32, dp=32, ep=32, weight_dtype="fp8")
    expert = 3 * 7168 * 2048
    per_moe_layer = 8 * expert + 1 * expert + 7168 * 256
    layers = 61 * (mla_attention_params() + 2 * 7168) + 3 * 3 * 7168 * 18432 + 58 * per_moe_layer
    embeddings = 2 * 129280 * 7168 + 7168  # untied input and output embeddings, final norm
    assert e.weights_bytes_per_gpu == (layers + embeddings) * FP8


def test_ep_with_tp_gqa_moe():
    # a Mixtral-shaped model written out here: GQA 32 heads / 8 KV heads of 128, 8 experts of 14336, top 2
    model = Model(name="moe", n_layers=32, d_model=4096, vocab_size=32000, tie_embeddings=False,
                  attention=DenseAttention(32, 8, 128),
                  ffn=FeedForward(intermediate=14336, n_experts=8, n_active_experts=2, moe_intermediate=14336,
                                  n_dense_layers=0))
    e = est(model, gpus=2, ep=2)  # tp 2, experts 4 per GPU, whole
    attention = 4096 * (16 * 128 + 2 * 4 * 128) + 16 * 128 * 4096  # half the heads and KV heads
    experts = 4 * 3 * 4096 * 14336 + 4096 * 8  # 4 whole experts and the router
    layers = 32 * (attention + experts + 2 * 4096)
    embeddings = 2 * 32000 * 4096 // 2 + 4096
    assert e.weights_bytes_per_gpu == (layers + embeddings) * BF16
    split = est(model, gpus=2)  # ep 1: every expert split in two, the same bytes; the router split too
    assert e.weights_bytes_per_gpu - split.weights_bytes_per_gpu == 32 * (4096 * 8 - 4096 * 8 // 2) * BF16


def test_decode_pool_holds_one_step_of_activations():
    both = est("llama-3.1-8b")
    decode = Estimator(both.model, replace(both.deployment, role="decode"))
    assert decode.activation_bytes_per_gpu(4, 8192) == both.activation_bytes_per_gpu(4, 1)


def test_cached_prefix_skips_its_compute_not_its_memory():
    e = est("llama-3.1-8b")
    full, half = e.row(2, 8192), e.row(2, 8192, cached=4096)
    assert half["kv_cache_bytes"] == full["kv_cache_bytes"]
    assert half["prefill_attention_flops"] == e.prefill_attention_flops(2, 4096, start=4096)
    assert half["prefill_seconds"] < full["prefill_seconds"]


@pytest.mark.parametrize("options, message", [
    (dict(gpus=8, dp=3), "multiple of pp x dp"),
    (dict(gpus=8, tp=2, dp=2), "must equal gpus"),
    (dict(gpus=8, dp=8, ep=3), "ep (3) must divide"),
    (dict(gpus=4, dp=0), "dp must be positive"),
])
def test_bad_layouts_are_refused(options, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        est("deepseek-v3", **options)


# --- the DeepSeek example --------------------------------------------------------------------------------

def test_deepseek_example_matches_its_committed_report():
    path = Path(__file__).parents[1] / "examples" / "deepseek_serving.py"
    spec = importlib.util.spec_from_file_location("deepseek_serving", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render() == module.REPORT.read_text(), "run python3 examples/deepseek_serving.py --write"
