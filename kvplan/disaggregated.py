"""Disaggregated serving: a prefill pool and a decode pool on their own GPUs, the cache sent between them.

Each pool is an Estimator (its own GPU, count and parallelism; the decode pool's role is "decode", so it holds
one decode step's activations rather than a prefill's). Per request of `prompt` tokens (of which `cached` come
from a prefix cache) and `output` generated tokens:
- the prefill pool's throughput is its batch's prompt tokens over its prefill time;
- the prompt's cache (one copy: kv_bytes_per_token x prompt) crosses the network from the tp GPUs of the
  prefill rank, each at GPU.network_bytes_per_s;
- the decode pool's step runs its batch at `decode_context` tokens per sequence (e.g. the average length);
- a balanced system runs prefill GPUs : decode GPUs so that requests prefilled per second equal requests
  decoded per second.
"""

from __future__ import annotations

from .estimator import Estimator
from .units import InputError


def kv_transfer_seconds(prefill: Estimator, prompt: int) -> float:
    """Seconds for one request's prompt cache (one copy) to leave the prefill pool over the network, sent by
    the tp GPUs of its rank together."""
    dep = prefill.deployment
    return prefill.kv_bytes_per_token * prompt / (dep.tp * dep.gpu.network_bytes_per_s)


def disaggregated(prefill: Estimator, decode: Estimator, *, prefill_batch: int, decode_batch: int, prompt: int,
                  output: int, decode_context: int, cached: int = 0) -> dict:
    """One flat dict: each pool's figures and the balanced whole (tokens/s, $ per million tokens)."""
    if decode.deployment.role != "decode":
        raise InputError("the decode pool's deployment must have role 'decode'")
    if output < 1:
        raise InputError(f"output tokens must be positive, not {output}")
    p = prefill.row(prefill_batch, prompt, prompt, cached)
    d = decode.row(decode_batch, decode_context)
    prefill_dep, decode_dep = prefill.deployment, decode.deployment
    transfer_bytes = prefill.kv_bytes_per_token * prompt
    transfer_seconds = kv_transfer_seconds(prefill, prompt)
    requests_prefilled_per_gpu = p["prefill_tokens_per_second"] / prompt / prefill_dep.gpus
    requests_decoded_per_gpu = d["decode_tokens_per_second"] / output / decode_dep.gpus
    prefill_gpus_per_decode_gpu = requests_decoded_per_gpu / requests_prefilled_per_gpu
    usd_per_request = (p["prefill_usd_per_mtok"] * prompt + d["decode_usd_per_mtok"] * output) / 1e6
    return {
        "model": p["model"], "attention": p["attention"],
        "prompt": prompt, "cached_prefix": cached, "output": output, "decode_context": decode_context,
        "prefill_gpu": prefill_dep.gpu.name, "prefill_gpus": prefill_dep.gpus, "prefill_tp": prefill_dep.tp,
        "prefill_dp": prefill_dep.dp, "prefill_ep": prefill_dep.ep, "prefill_batch": prefill_batch,
        "prefill_fits": p["fits"], "prefill_total_bytes_per_gpu": p["total_bytes_per_gpu"],
        "prefill_seconds": p["prefill_seconds"],
        "prefill_tokens_per_second_per_gpu": p["prefill_tokens_per_second"] / prefill_dep.gpus,
        "prefill_tokens_per_second_per_node": p["prefill_tokens_per_second"] / prefill_dep.gpus * prefill_dep.node_gpus,
        "prefill_usd_per_mtok": p["prefill_usd_per_mtok"],
        "kv_transfer_bytes_per_request": transfer_bytes, "kv_transfer_seconds_per_request": transfer_seconds,
        "decode_gpu": decode_dep.gpu.name, "decode_gpus": decode_dep.gpus, "decode_tp": decode_dep.tp,
        "decode_dp": decode_dep.dp, "decode_ep": decode_dep.ep, "decode_batch": decode_batch,
        "decode_fits": d["fits"], "decode_total_bytes_per_gpu": d["total_bytes_per_gpu"],
        "decode_seconds_per_token": d["decode_seconds_per_token"],
        "decode_tokens_per_second_per_user": 1 / d["decode_seconds_per_token"],
        "decode_tokens_per_second_per_node": d["decode_tokens_per_second"] / decode_dep.gpus * decode_dep.node_gpus,
        "decode_usd_per_mtok": d["decode_usd_per_mtok"],
        "prefill_gpus_per_decode_gpu": prefill_gpus_per_decode_gpu,
        "usd_per_mtok_output": usd_per_request / output * 1e6,
    }
