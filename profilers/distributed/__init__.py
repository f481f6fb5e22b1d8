"""Tensor-parallel attention layers under torch.distributed: per-GPU cache bytes and peak memory beside the estimate.

Each rank builds its shard of the first `layers` attention layers from kvplan.models' own classes: the
attention AttentionKind.shard(tp) gives (n_heads/tp query heads; dense attention ceil(n_kv_heads/tp) KV heads),
with the parts the kind replicates kept whole (MQA's KV head, MLA's latent projection and norm, TPA's B
factors, the DSA indexer) by its layer's shard_state. Every rank draws the same full layer (same seed) on the host
and copies its slice; the output projection's partial sums are all-reduced, so the sum over ranks is the
unsharded layer's output, which rank 0 checks against the full layer run on the same inputs.

Per rank it reports the bytes of its real cache tensors beside Estimator.kv_cache_bytes_per_gpu for the
same model slice, batch, context and tp; the bytes of its weights beside Estimator.weights_bytes_per_gpu
(which splits every weight evenly, so the replicated parts show up as its error); and on a GPU the peak
allocated memory (torch.cuda) of prefill and decode beside the Estimator's memory per GPU (weights + cache +
activations), and the part above the resident weights, cache and RoPE tables beside
activation_bytes_per_gpu. The Estimator describes the attention layers alone (the model with no
feed-forward and no vocabulary), as they run here. On the CPU peak memory is None.

Modules: shard.py (which slice each rank holds), measure.py (one configuration on every rank), report.py
(tables and files), launch.py (the command line, the process group, torchrun). Launch (nccl on cuda, gloo on
cpu):
    torchrun --standalone --nproc_per_node 2 -m kvplan.profilers.distributed --model llama-3.1-8b \\
        --context 4k,32k --batch 1,8 --layers 1 --device cuda --out tp2.csv
"""

from __future__ import annotations

from .launch import init_process_group, jobs_for, launch, main, spawn_cpu
from .measure import Job, build_layers, cache_bytes, full_layer_states, profile_job, run_jobs, run_layers, shard_layers
from .report import print_table, write_rows
from .shard import shard_spec, shard_state

__all__ = ["Job", "build_layers", "cache_bytes", "full_layer_states", "init_process_group", "jobs_for", "launch",
           "main", "print_table", "profile_job", "run_jobs", "run_layers", "shard_layers", "shard_spec", "shard_state",
           "spawn_cpu", "write_rows"]
