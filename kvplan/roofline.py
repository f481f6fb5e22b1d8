"""Seconds of one forward, operation by operation: each kind of operation at its own efficiencies.

A forward is a sum of kernels. Each kind of operation (a `Kernel`) reaches its own fraction of the GPU's peak
FLOP/s (`compute`) and of its peak bandwidth (`bandwidth`), and pays a fixed time per call (`call_seconds`:
launch, tail and synchronisation), so on one GPU

    seconds(op) = calls x call_seconds + max(FLOPs / (peak FLOP/s x compute), bytes / (peak bandwidth x bandwidth))

and a forward takes the sum over its operations plus communication (the larger of the two with `overlap`).
The kinds (`Kernels`), each with its own figures for bf16 and for fp8 where both run:
- gemm / gemm_fp8: dense linear layers (attention projections, dense and shared feed-forward). Shape decides
  which bound holds: a large GEMM is compute bound, a skinny one (few tokens, decode) streams its weights, and a
  small TP-sharded one is mostly its call time.
- moe_gemm / moe_gemm_fp8: grouped expert GEMMs over the experts a batch's tokens select; their compute
  efficiency falls as tensor parallelism narrows each expert: compute x w / (w + moe_half_width), w the
  intermediate width of one expert on one GPU.
- prefill_attention: causal flash attention; its compute efficiency grows with the keys a query attends and the
  width of its heads: e(L, hd) = compute x L / (L + attention_half_tokens) x r(hd) / r(128), r(hd) = hd / (hd +
  attention_half_head_dim) (fitted to vLLM's FlashAttention-3 timings; 128-wide heads at long prompts reach
  `compute`). L is a causal prompt's length, whose queries attend L/2 keys on average; a windowed or chunked
  layer reads the curve at twice the keys its queries attend on average (Estimator._prefill_keys).
- decode_attention: a scan of the cache at `bandwidth`, one call per layer.
- mla_prefill_attention / mla_decode_attention: Multi-head Latent Attention (MLA, and DSA's dense part) in its
  own kernels: prefill at e(L) = compute x L / (L + mla_half_tokens) of bf16 peak (192-wide query-key heads,
  128-wide values), decode a scan of the latent cache at `bandwidth`. `call_seconds` per layer is what vLLM's
  MLA block spends besides its projection GEMMs (latent norms, RoPE, cache writes, the absorbed per-head
  products, activation quantisation), fitted as the remainder of aiconfigurator's MLA module tables.
- elementwise: norms, residual adds, the gated activation: bytes read and written per token.
- logits: the LM head GEMM on the tokens that need a logit (gemm's figures), and the fp32 logits it writes.
- indexer, topk, decode_topk, sparse_attention: DeepSeek Sparse Attention's lightning indexer (fp8 products over
  every visible key), the top-k selection over its fp32 scores (`topk` in prefill, once per query chunk and
  layer; `decode_topk` in decode, a few long rows once a layer), and sparse MLA attention: in prefill one kernel
  a layer, the larger of its FLOPs (absorbed, over the selected pairs) at sparse_attention's compute and the bytes
  of the latent rows each query reads at its bandwidth; in decode MLA's decode attention plus those row reads at
  sparse_attention's bandwidth. The indexer and top-k run whole on every tensor-
  parallel rank (the indexer is replicated), split only over data-parallel ranks; in decode the indexer reads
  its cached keys as it scores them (one kernel: the larger of its FLOPs and those bytes).
- communication: all-reduce and sends (kvplan.parallel) at `bandwidth` of the link and `call_seconds` per
  collective inside a node; all_to_all: expert-parallel dispatch and combine, its own fraction of the link
  and time per call (NCCL's all-to-all inside a node).

Every figure is a plain number: hardware.KERNELS holds the defaults per GPU with their sources, and
`kvplan calibrate` measures them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from .units import InputError, maximum, minimum

REFERENCE_HEAD_DIM = 128  # head width at which prefill_attention.compute is stated
SCORE_BYTES = 4  # the indexer's scores are fp32


@dataclass(frozen=True)
class Kernel:
    """One kind of operation: fractions of peak FLOP/s and bandwidth it reaches, and seconds per call."""

    compute: float = 1.0
    bandwidth: float = 1.0
    call_seconds: float = 0.0

    def seconds(self, flops, moved_bytes, peak_flops: float, peak_bandwidth: float, calls=1):
        """Seconds of `calls` calls doing `flops` and moving `moved_bytes` in all on one GPU."""
        compute = flops / (peak_flops * self.compute) if peak_flops else 0.0
        return calls * self.call_seconds + maximum(compute, moved_bytes / (peak_bandwidth * self.bandwidth))


@dataclass(frozen=True)
class Kernels:
    """Every operation kind's figures on one GPU, and where they come from."""

    gemm: Kernel = Kernel()
    gemm_fp8: Kernel = Kernel()
    moe_gemm: Kernel = Kernel()
    moe_gemm_fp8: Kernel = Kernel()
    prefill_attention: Kernel = Kernel()
    attention_half_tokens: float = 0.0  # keys per query at which prefill attention reaches half its efficiency
    attention_half_head_dim: float = 0.0  # head width at which r(hd) = hd / (hd + this) is one half
    moe_half_width: float = 0.0  # expert width per GPU at which grouped GEMMs reach half their compute
    decode_attention: Kernel = Kernel()
    mla_prefill_attention: Kernel = Kernel()
    mla_half_tokens: float = 0.0  # keys per query at which MLA prefill attention reaches half its efficiency
    mla_decode_attention: Kernel = Kernel()
    elementwise: Kernel = Kernel()
    indexer: Kernel = Kernel()
    topk: Kernel = Kernel()
    decode_topk: Kernel = Kernel()
    sparse_attention: Kernel = Kernel()
    communication: Kernel = Kernel()
    all_to_all: Kernel = Kernel()
    source: str = ""

    def attention_efficiency(self, keys: float, head_dim: float):
        """Compute efficiency of causal prefill attention at `keys` keys per sequence and `head_dim` wide heads."""
        g = self.attention_half_head_dim
        shape = (head_dim / (head_dim + g)) / (REFERENCE_HEAD_DIM / (REFERENCE_HEAD_DIM + g))
        return minimum(self.prefill_attention.compute * keys / (keys + self.attention_half_tokens) * shape, 1.0)

    def mla_attention_efficiency(self, keys: float):
        """Compute efficiency of MLA's causal prefill attention at `keys` keys per sequence."""
        return minimum(self.mla_prefill_attention.compute * keys / (keys + self.mla_half_tokens), 1.0)

    def moe_gemm_for(self, fp8: bool, width: int) -> Kernel:
        """The grouped GEMM kernel for experts `width` wide on one GPU."""
        kernel = self.moe_gemm_fp8 if fp8 else self.moe_gemm
        return replace(kernel, compute=kernel.compute * width / (width + self.moe_half_width))

    def uniform(self, compute: float | None = None, bandwidth: float | None = None,
                attention: float | None = None) -> "Kernels":
        """These kernels with one compute and/or bandwidth efficiency for every operation (a --compute-efficiency
        or --bandwidth-efficiency override); `attention` sets prefill attention's compute apart (flat in length)."""
        changed = {}
        for f in fields(self):
            kernel = getattr(self, f.name)
            if isinstance(kernel, Kernel) and f.name not in ("communication", "all_to_all"):
                changed[f.name] = replace(kernel, compute=compute or kernel.compute,
                                          bandwidth=bandwidth or kernel.bandwidth)
        if attention or compute:
            for name in ("prefill_attention", "mla_prefill_attention"):
                changed[name] = replace(changed[name], compute=attention or compute)
            changed["attention_half_tokens"] = 0.0
            changed["mla_half_tokens"] = 0.0
            changed["attention_half_head_dim"] = 0.0
            changed["moe_half_width"] = 0.0
        return replace(self, **changed)


def kernels_from_dict(data: dict) -> Kernels:
    """Kernels from asdict(Kernels) (a hardware profile's "kernels" object); unknown keys are an error."""
    names = {f.name: f for f in fields(Kernels)}
    values = {}
    for key, value in data.items():
        if key not in names:
            raise InputError(f"unknown kernel {key!r}; known: {', '.join(names)}")
        if key == "source":
            values[key] = str(value)
        elif isinstance(value, dict):
            unknown = set(value) - {"compute", "bandwidth", "call_seconds"}
            if unknown:
                raise InputError(f"kernel {key} has unknown field(s) {', '.join(sorted(unknown))}")
            values[key] = Kernel(**{k: _fraction(f"{key}.{k}", v, k != "call_seconds") for k, v in value.items()})
        else:
            values[key] = _fraction(key, value, False)
    # A profile measured without MLA, all-to-all or decode top-k figures prices them with its generic attention,
    # communication and top-k figures.
    for name, like in (("mla_prefill_attention", "prefill_attention"), ("mla_half_tokens", "attention_half_tokens"),
                       ("mla_decode_attention", "decode_attention"), ("all_to_all", "communication"),
                       ("decode_topk", "topk")):
        if name not in values and like in values:
            values[name] = values[like]
    return replace(Kernels(), **values)


def _fraction(name: str, value, at_most_one: bool) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"kernel figure {name} must be a number, not {value!r}") from None
    if not number >= 0 or number == float("inf") or (at_most_one and not 0 < number <= 1):
        raise InputError(f"kernel figure {name} must be {'a fraction in (0, 1]' if at_most_one else 'a finite number >= 0'}, not {value!r}")
    return number


OPERATIONS = ("gemm", "moe", "attention", "indexer", "elementwise", "logits", "communication")
