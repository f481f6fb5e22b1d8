"""Attention and MoE layers over several GPUs under torch.distributed: per-GPU bytes (and on CUDA peak memory or
communication time) beside the estimate, and outputs checked against the unsharded layers. Three layouts:

- tp (tensor parallelism): each rank builds its shard of the first `layers` attention layers from kvplan.models'
  own classes: the attention AttentionKind.shard(tp) gives (n_heads/tp query heads; dense attention
  ceil(n_kv_heads/tp) KV heads), with the parts the kind replicates kept whole (MQA's KV head, MLA's latent
  projection and norm, TPA's B factors, the DSA indexer) by its layer's shard_state. Every rank draws the same
  full layer (same seed) on the host and copies its slice; the output projection's partial sums are
  all-reduced, so the sum over ranks is the unsharded layer's output, which rank 0 checks against the full
  layer run on the same inputs.
- dp (data-parallel attention): each rank holds the whole attention layers and runs its own share of the batch's
  sequences (batch // dp, one more on the first batch % dp ranks); each rank checks its rows against the
  unsharded layers run on the whole batch.
- ep (expert parallelism, expert.py): one MoE layer with its routed experts spread whole over the ranks (router
  and shared experts whole on each), each rank's tokens dispatched to the ranks of their top-k experts and
  combined back with all_to_all_single; per rank the weights it holds beside the estimate, the bytes it
  dispatches and combines, and on CUDA the time of those all-to-alls beside Estimator.all_to_all_seconds of
  the same bytes (the GPU's all_to_all kernel figures); --reestimate FILE derives a file's estimates again.

For tp and dp, per rank it reports the bytes of its real cache tensors beside Estimator.kv_cache_bytes_per_gpu
for the same model slice, batch, context, tp and dp; the bytes of its weights beside
Estimator.weights_bytes_per_gpu (which splits every weight evenly under tp, so the replicated parts show up as
its error); and on a GPU the peak allocated memory (torch.cuda) of prefill and decode beside the Estimator's
memory per GPU (weights + cache + activations), and the part above the resident weights, cache and RoPE tables
beside activation_bytes_per_gpu. The Estimator describes the attention layers alone (the model with no
feed-forward and no vocabulary), as they run here. On the CPU peak memory and times are None.

Modules: shard.py (which slice each tensor-parallel rank holds), measure.py (an attention job on every rank),
expert.py (an MoE job on every rank), report.py (tables and files), launch.py (the command line, the process
group, torchrun). Launch (nccl on cuda, gloo on cpu):
    torchrun --standalone --nproc_per_node 2 -m kvplan.profilers.distributed --model llama-3.1-8b \\
        --context 4k,32k --batch 1,8 --layers 1 --device cuda --out tp2.csv
    torchrun --standalone --nproc_per_node 2 -m kvplan.profilers.distributed --model llama-3.1-8b \\
        --parallel dp --context 4k --batch 8 --device cuda --out dp2.csv
    torchrun --standalone --nproc_per_node 2 -m kvplan.profilers.distributed --model deepseek-v3 \\
        --parallel ep --tokens 64,4096 --device cuda --out ep2.csv
"""

from __future__ import annotations

from .expert import ExpertJob, ExpertShard, expert_range, moe_model, moe_state
from .launch import expert_jobs_for, init_process_group, jobs_for, launch, main, spawn_cpu
from .measure import (Job, build_layers, cache_bytes, full_layer_states, profile_job, rank_sequences, run_jobs,
                      run_layers, shard_layers)
from .report import print_table, write_rows
from .shard import shard_spec, shard_state

__all__ = ["ExpertJob", "ExpertShard", "Job", "build_layers", "cache_bytes", "expert_jobs_for", "expert_range",
           "full_layer_states", "init_process_group", "jobs_for", "launch", "main", "moe_model", "moe_state",
           "print_table", "profile_job", "rank_sequences", "run_jobs", "run_layers", "shard_layers", "shard_spec",
           "shard_state", "spawn_cpu", "write_rows"]
