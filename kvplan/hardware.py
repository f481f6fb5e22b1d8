"""GPU descriptions: memory, bandwidth, dense matrix FLOP/s, interconnect, price, and what kernels reach.

Datasheet figures are dense (no 2:4 sparsity). Each preset carries per-operation efficiencies (`kernels`,
kvplan.roofline.Kernels) fitted to measured kernel timings, with their source: for the H100, H200, A100, L40S
and B200 the vLLM 0.24 / NCCL tables of NVIDIA's aiconfigurator 0.12.0 (fits by examples/derive_kernel_defaults.py);
other GPUs borrow the nearest measured GPU's fractions, as their `kernels.source` says. `kvplan calibrate`
measures them on the GPU at hand. compute_efficiency / bandwidth_efficiency / attention_efficiency, when set
(--compute-efficiency, a hardware profile), replace every operation's figure with one number.
"""

from __future__ import annotations

import difflib
import json
import math
import warnings
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path

from .roofline import Kernel, Kernels, kernels_from_dict
from .units import InputError, parse_bytes

_AIC = "aiconfigurator 0.12.0 vLLM 0.24 tables, fitted by examples/derive_kernel_defaults.py"
_ELEMENTWISE = Kernel(1.0, 0.8, 3e-6)  # aiconfigurator's system files: memory-bound ops at 0.8 of bandwidth + 3 us
# DeepSeek Sparse Attention on an H100, kvplan's Triton and Gluon kernels: FP8 indexer 631 TFLOP/s = 0.319 of
# 1979 (examples/bench/bench_prefill-h100-deepseek.csv at ce0f82b: 3.51 ms over the last 1024-query chunk of a 128k
# prompt, one layer); exact top-k 1.22 ms over 1024 x 131072 fp32 scores (537 MB;
# examples/bench/bench_prefill-h100-dsa.csv) and 96 us over 16 x 131072 (8.4 MB, a decode step;
# examples/bench/bench_decode-h100-b16-128k.csv's log): the line through both gives 78 us a call + 0.140 of 3.35
# TB/s (a few rows leave most of the GPU idle); sparse attention (prefill: the larger of its FLOPs and its row
# reads) reading 2.36 MB of latents per query in 0.80 ms = 0.898 of 3.35 TB/s at 32 heads, where the row reads
# bind (bench_prefill-h100-dsa.csv), and 395 TFLOP/s = 0.399 of 989.4 at DeepSeek's 128 heads, where its FLOPs
# bind (examples/bench/latent_kernel_variants-h100.csv, dsa-sparse-1024q-32k, gluon: 1024 queries x 2048 rows in
# 1.48 ms). Decode's top-k (kvplan.models'
# topk_indices: radix selection or torch.topk, whichever times faster) over 1-16 rows of 4k-128k scores, alone
# (examples/bench/dsa_decode_shapes-h100.csv: `python3 examples/dsa_decode_parts.py --shapes ...`): 20.6 us at
# 8 x 4k to 72.8 us at 16 x 128k; least squares gives 23.6 us a call + 0.050 of 3.35 TB/s (within 8 us of all
# seven points). Other GPUs take the same figures (no published measurement). The indexer reads its cached keys
# at MLA decode's scan bandwidth (an assumption: the same memory-bound scan of a latent-like cache).
_DSA = dict(indexer=Kernel(0.319, 1.0, 0.0), topk=Kernel(1.0, 0.140, 78e-6), decode_topk=Kernel(1.0, 0.050, 23.6e-6),
            sparse_attention=Kernel(0.399, 0.898, 0.0))


# Grouped expert GEMMs lose compute efficiency as tp narrows each expert (aiconfigurator's H100 vLLM table,
# DeepSeek-V3's experts in fp8 at moe_tp 1/2/4/8, widths 2048/1024/512/256: 0.303/0.267/0.208/0.146 of peak):
# e(w) = e_max w / (w + 372). The fitted MoE figures below hold at their table's width (fp8: 2048, bf16: 14336)
# and are scaled to e_max here.
MOE_HALF_WIDTH = 372.0


def _moe(compute: float, bandwidth: float, width: int, call: float) -> Kernel:
    return Kernel(compute * (width + MOE_HALF_WIDTH) / width, bandwidth, call)


# All-to-all (expert-parallel dispatch and combine) inside a node, fits by examples/derive_kernel_defaults.py:
# H100: NCCL all_to_all_single on 2 H100 SXMs over NVLink (examples/ep2-h100.csv, DeepSeek-V3's dispatch and
# combine at 64 and 4096 tokens), 53 us per call + bytes sent / (0.642 x link) (aiconfigurator's DeepEP
# low-latency table on 8 H100s agrees: 49 us, 0.50); H200 and B200: aiconfigurator's vLLM DeepEP low-latency
# tables (8 GPUs). The other GPUs take the H100's figures, an assumption (no measurement).
_ALL_TO_ALL = Kernel(1.0, 0.642, 53.2e-6)


def _kernels(source: str, gemm, gemm_fp8, moe, moe_fp8, attention, half_tokens, half_head_dim, decode,
             link, call_link, mla_prefill, mla_decode, all_to_all=_ALL_TO_ALL) -> Kernels:
    """A GPU's kernels from fitted figures: (compute, bandwidth, call seconds) triples, attention's compute;
    moe and moe_fp8: (compute, bandwidth[, call seconds]) (without a call: the GEMM's); mla_prefill: (compute,
    half tokens, call seconds); mla_decode: (bandwidth, call seconds)."""
    moe, moe_fp8 = (*moe, gemm[2])[:3], (*moe_fp8, gemm_fp8[2])[:3]
    return Kernels(gemm=Kernel(*gemm), gemm_fp8=Kernel(*gemm_fp8), moe_gemm=_moe(*moe[:2], 14336, moe[2]),
                   moe_gemm_fp8=_moe(*moe_fp8[:2], 2048, moe_fp8[2]), moe_half_width=MOE_HALF_WIDTH,
                   prefill_attention=Kernel(attention, decode[0], 0.0),
                   attention_half_tokens=half_tokens, attention_half_head_dim=half_head_dim,
                   decode_attention=Kernel(attention, *decode),
                   mla_prefill_attention=Kernel(mla_prefill[0], decode[0], mla_prefill[2]),
                   mla_half_tokens=mla_prefill[1], mla_decode_attention=Kernel(attention, *mla_decode),
                   elementwise=_ELEMENTWISE, communication=Kernel(1.0, link, call_link), all_to_all=all_to_all,
                   source=source, **{**_DSA, "indexer": replace(_DSA["indexer"], bandwidth=mla_decode[0])})


# Figures per GPU: GEMM bf16 / fp8 (compute at m, n, k >= 4096; bandwidth and call time from m <= 8), MoE
# grouped GEMM bf16 (Mixtral shape) / fp8 block-scaled (DeepSeek-V3 shape): compute at >= 8k tokens, bandwidth
# and call time from 1-32 tokens at moe_tp 8 where the fit has a call time (H100, H200, B200; the others keep
# the one-token bandwidth and the GEMM's call), causal prefill attention (32/8 heads, head_dim 128: efficiency
# e_max, L_half), its head-width g, decode attention (bandwidth, call), all-reduce on 8 GPUs (fraction of
# link_bytes_per_s, large messages), the small-message all-reduce time (vLLM's custom all-reduce under CUDA
# graphs, 8 H100s: 4.7 us), MLA prefill (e_max, L_half, call per layer) and MLA decode (bandwidth, call per
# layer) from vLLM's DeepSeek-V3 attention block at 16 heads per GPU less its projection GEMMs.
KERNELS: dict[str, Kernels] = {
    "h100-sxm": _kernels(f"H100 SXM: {_AIC}; elementwise: aiconfigurator system file; DSA: kvplan's H100 kernels; "
                         "all-to-all: examples/ep2-h100.csv",
                         (0.794, 0.860, 3.2e-6), (0.532, 0.786, 5.9e-6), (0.517, 0.803, 15.4e-6),
                         (0.303, 1.0, 27.9e-6), 0.779, 2159, 49.0, (0.860, 11.0e-6), 0.918, 4.7e-6,
                         (0.924, 11855, 84.4e-6), (0.869, 81.1e-6)),
    "h200": _kernels(f"H200: {_AIC}; head width g and small all-reduce: the H100's; DSA: kvplan's H100 fractions; "
                     "all-to-all: aiconfigurator's DeepEP table",
                     (0.769, 0.823, 3.4e-6), (0.602, 0.744, 6.1e-6), (0.674, 0.829, 12.4e-6), (0.310, 1.0, 23.1e-6),
                     0.759, 2034, 52.7, (0.848, 12.5e-6), 0.944, 4.7e-6, (0.936, 11932, 87.1e-6), (0.881, 81.1e-6),
                     Kernel(1.0, 0.449, 48.3e-6)),
    "a100-80gb": _kernels(f"A100 SXM: {_AIC}; no fp8 (fp8 rows: bf16's); MoE: the bf16 GEMM's; head width g, "
                          "small all-reduce and MLA: the H100's; all-to-all: the H100's, an assumption",
                          (0.910, 0.722, 4.4e-6), (0.910, 0.722, 4.4e-6),
                          (0.910, 0.722), (0.910, 0.722), 0.627, 1201, 49.0, (0.756, 19.9e-6), 0.683, 4.7e-6,
                          (0.924, 11855, 84.4e-6), (0.869, 81.1e-6)),
    # L40S: small GEMM and decode fits exceed the datasheet bandwidth (its 96 MB L2 holds the smaller tables'
    # operands), so bandwidth is capped at 0.9; its PCIe all-reduce reaches 5% of 32 GB/s (no peer-to-peer).
    "l40s": _kernels(f"L40S: {_AIC}, bandwidth capped at 0.9 (L2-resident fits exceed the datasheet); head "
                     "width g: the H100's; all-to-all: the H100's, an assumption", (0.614, 0.9, 3.0e-6),
                     (0.496, 0.9, 3.0e-6), (0.602, 0.833), (0.402, 0.765), 0.573, 982, 49.0, (0.9, 11.0e-6),
                     0.050, 22.4e-6, (0.499, 3088, 94.0e-6), (0.742, 119.6e-6)),
    "b200": _kernels(f"B200: {_AIC}; small all-reduce: the H100's; all-to-all: aiconfigurator's DeepEP table",
                     (0.689, 0.769, 2.8e-6), (0.474, 0.668, 6.6e-6), (0.241, 0.659, 4.0e-6), (0.206, 1.0, 16.4e-6),
                     0.763, 4746, 49.0, (0.881, 8.2e-6), 0.680, 4.7e-6, (0.861, 3276, 48.1e-6), (0.656, 36.4e-6),
                     Kernel(1.0, 0.490, 53.9e-6)),
}
for _name, _like, _why in (("h100-pcie", "h100-sxm", "H100 SXM's fractions (same kernels, no PCIe table)"),
                           ("h800", "h100-sxm", "H100 SXM's fractions (same chip)"),
                           ("a100-40gb", "a100-80gb", "A100 80GB's fractions"),
                           ("mi300x", "h100-sxm", "H100 SXM's fractions, an assumption: no published per-kernel "
                                                  "table for MI300X"),
                           ("rtx-4090", "l40s", "L40S's fractions (same Ada chip family), an assumption")):
    KERNELS[_name] = replace(KERNELS[_like], source=_why + "; " + KERNELS[_like].source)


@dataclass(frozen=True)
class GPU:
    name: str
    memory_bytes: int
    bandwidth_bytes_per_s: float  # HBM/GDDR, datasheet
    bf16_flops: float  # dense matrix FLOP/s
    fp8_flops: float  # dense matrix FLOP/s; 0 where the GPU has no fp8 units
    link_bytes_per_s: float  # GPU-to-GPU, one direction (NVLink/Infinity Fabric, else PCIe)
    usd_per_hour: float  # default price of one GPU-hour
    # One efficiency for every operation, replacing the kernels' own (None: each operation's, from `kernels`).
    compute_efficiency: float | None = None
    bandwidth_efficiency: float | None = None
    source: str = ""
    attention_efficiency: float | None = None  # prefill attention's compute, flat in length (None: kernels')
    gpus_per_node: int = 8  # GPUs that share the GPU-to-GPU link (an NVLink domain); beyond it the network
    network_bytes_per_s: float = 50e9  # inter-node fabric per GPU, one direction (8 x 400 Gb/s NICs per node: 50 GB/s)
    kernels: Kernels = Kernels()  # per-operation efficiencies (kvplan.roofline); presets: KERNELS[name]

    @property
    def kernel_figures(self) -> Kernels:
        """The kernels the roofline uses: `kernels`, with any single-number override applied."""
        if self.compute_efficiency is None and self.bandwidth_efficiency is None and self.attention_efficiency is None:
            return self.kernels
        return self.kernels.uniform(self.compute_efficiency, self.bandwidth_efficiency, self.attention_efficiency)


MiB, GB, TB, T = 2**20, 10**9, 10**12, 10**12
_PRICE_NOTE = "price: typical 2025 on-demand cloud rate, an assumption (override with --usd-per-hour)"

GPUS: dict[str, GPU] = {g.name: g for g in (
    GPU("h100-sxm", 81559 * MiB, 3.35 * TB, 989.4 * T, 1978.9 * T, 450 * GB, 2.99,
        source="NVIDIA H100 datasheet (SXM5: 3.35 TB/s, 989 TFLOPS bf16 dense, NVLink 900 GB/s bidirectional); "
               "memory as nvidia-smi reports it on an H100 SXM (81559 MiB); " + _PRICE_NOTE),
    GPU("h100-pcie", 81559 * MiB, 2.0 * TB, 756 * T, 1513 * T, 64 * GB, 2.49, network_bytes_per_s=25 * GB,
        source="NVIDIA H100 datasheet (PCIe: 2.0 TB/s, 756 TFLOPS bf16 dense, PCIe Gen5 64 GB/s); network: one "
               "200 Gb/s NIC per GPU assumed; " + _PRICE_NOTE),
    GPU("h200", 143771 * MiB, 4.8 * TB, 989.4 * T, 1978.9 * T, 450 * GB, 3.79,
        source="NVIDIA H200 datasheet (4.8 TB/s, 141 GB, 989 TFLOPS bf16 dense); memory as nvidia-smi reports it "
               "on an H200 (143771 MiB); " + _PRICE_NOTE),
    GPU("h800", 81559 * MiB, 3.35 * TB, 989.4 * T, 1978.9 * T, 200 * GB, 2.0,
        source="H800 SXM: H100 SXM compute and memory with NVLink cut to 400 GB/s bidirectional; nodes of 8 with "
               "one 400 Gb/s InfiniBand NIC per GPU (DeepSeek Inference System Overview, 2025); $2/GPU-hour is "
               "the rental price DeepSeek-V3's report assumes"),
    GPU("a100-40gb", 40960 * MiB, 1.555 * TB, 312 * T, 0.0, 300 * GB, 1.29, network_bytes_per_s=25 * GB,
        source="NVIDIA A100 datasheet (SXM 40GB: 1.555 TB/s, 312 TFLOPS bf16 dense, no fp8, NVLink 600 GB/s); "
               "network: DGX A100's 8 x 200 Gb/s NICs per node; " + _PRICE_NOTE),
    GPU("a100-80gb", 81920 * MiB, 2.039 * TB, 312 * T, 0.0, 300 * GB, 1.79, network_bytes_per_s=25 * GB,
        source="NVIDIA A100 datasheet (SXM 80GB: 2.039 TB/s, 312 TFLOPS bf16 dense, no fp8, NVLink 600 GB/s); "
               "network: DGX A100's 8 x 200 Gb/s NICs per node; " + _PRICE_NOTE),
    GPU("l40s", 48 * GB, 0.864 * TB, 362.05 * T, 733 * T, 32 * GB, 0.99, network_bytes_per_s=12.5 * GB,
        source="NVIDIA L40S datasheet (48 GB GDDR6, 864 GB/s, 362 TFLOPS bf16 dense, 733 fp8 dense, PCIe Gen4); "
               "network: one 100 Gb/s NIC per GPU assumed; " + _PRICE_NOTE),
    GPU("b200", 183359 * MiB, 8.0 * TB, 2250 * T, 4500 * T, 900 * GB, 5.99, network_bytes_per_s=50 * GB,
        source="NVIDIA HGX B200 datasheet (180 GB HBM3e; memory as nvidia-smi reports it, 183359 MiB, 8 TB/s, 2.25 PFLOPS bf16 dense, 4.5 fp8 dense, NVLink5 1.8 TB/s "
               "bidirectional); " + _PRICE_NOTE),
    GPU("mi300x", 205822885888, 5.3 * TB, 1307.4 * T, 2614.9 * T, 448 * GB, 2.49,
        source="AMD Instinct MI300X datasheet (192 GB HBM3; memory as rocm-smi reports it, 205822885888 bytes, 5.3 TB/s, 1307 TFLOPS bf16 dense, 2615 fp8 dense, "
               "Infinity Fabric 896 GB/s bidirectional); " + _PRICE_NOTE),
    GPU("rtx-4090", 24564 * MiB, 1.008 * TB, 165.2 * T, 330.3 * T, 32 * GB, 0.39, network_bytes_per_s=12.5 * GB,
        source="NVIDIA Ada whitepaper (RTX 4090: 24 GB GDDR6X, 1008 GB/s, 165 TFLOPS bf16 dense with fp32 accumulate, "
               "330 fp8 dense, PCIe Gen4); " + _PRICE_NOTE),
)}

GPUS = {name: replace(gpu, kernels=KERNELS[name]) for name, gpu in GPUS.items()}

GPU_ALIASES = {  # other names --gpu accepts -> preset
    "h100": "h100-sxm", "a100": "a100-80gb", "4090": "rtx-4090", "mi300": "mi300x"}


def get_gpu(name: str) -> GPU:
    key = str(name).strip().lower().replace("_", "-").replace(" ", "-")
    key = GPU_ALIASES.get(key, key)
    if key in GPUS:
        return GPUS[key]
    near = difflib.get_close_matches(key, list(GPUS) + list(GPU_ALIASES), n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(near)}?" if near else f"; known GPUs: {', '.join(GPUS)}"
    raise InputError(f"unknown GPU {name!r}{hint}")


_FIELD_NAMES = {f.name for f in fields(GPU)}
_OPTIONAL_FIELDS = {f.name for f in fields(GPU) if f.default is not MISSING}


def _describe_default(value) -> str:
    if value is None:
        return "each operation's own (kernels)"
    if isinstance(value, Kernels):
        return "the H100 SXM's per-operation fractions"
    return f"{value:g}"


_DEFAULTS = {f.name: _describe_default(f.default) for f in fields(GPU)
             if f.default is not MISSING and f.name != "source"}


def gpu_rows() -> list[dict]:
    """`kvplan gpus`: every preset's fields as one flat row each, the other names --gpu takes for it, and where
    its per-operation efficiencies come from."""
    return [{**asdict(gpu), "kernels": gpu.kernels.source,
             "aliases": ", ".join(a for a, name in GPU_ALIASES.items() if name == gpu.name)} for gpu in GPUS.values()]


def parse_assignments(pairs: list[str]) -> dict[str, str]:
    """['memory_bytes=80GiB', 'usd_per_hour=2'] -> {'memory_bytes': '80GiB', 'usd_per_hour': '2'} (values checked later)."""
    out = {}
    for pair in pairs:
        key, sep, value = (part.strip() for part in str(pair).partition("="))
        if not sep or not key or not value:
            raise InputError(f"--gpu-set expects FIELD=VALUE, not {pair!r}; fields: {', '.join(sorted(_FIELD_NAMES))}")
        out[key] = value
    return out


_WHOLE_FIELDS = ("memory_bytes", "gpus_per_node")


def with_overrides(gpu: GPU, overrides: dict) -> GPU:
    """Replace fields (as in GPU) from a dict, e.g. a hardware profile written by `kvplan calibrate`. An optional
    field given as None (JSON null) keeps its value."""
    unknown = set(overrides) - _FIELD_NAMES
    if unknown:
        raise InputError(f"unknown hardware field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_FIELD_NAMES))}")
    clean = {}
    for key, value in overrides.items():
        if value is None and key in _OPTIONAL_FIELDS:
            continue
        if key in ("name", "source"):
            if not isinstance(value, str) or (key == "name" and not value.strip()):
                raise InputError(f"hardware field {key} must be a non-empty string, not {value!r}")
            clean[key] = value
            continue
        if key == "kernels":
            if not isinstance(value, dict):
                raise InputError("hardware field kernels must be an object of kernel figures (kvplan.roofline.Kernels)")
            clean[key] = kernels_from_dict(value)
            continue
        if value is None and key in ("compute_efficiency", "bandwidth_efficiency", "attention_efficiency"):
            clean[key] = None
            continue
        if key == "memory_bytes" and isinstance(value, str):
            value = parse_bytes(value, "hardware field memory_bytes")  # accepts 80GiB, 141GB
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError, OverflowError):
            number = math.nan
        if not math.isfinite(number) or number < 0 or (number == 0 and key != "fp8_flops"):
            raise InputError(f"hardware field {key} must be a positive finite number, not {value!r}")
        if key.endswith("efficiency") and number > 1:
            raise InputError(f"hardware field {key} is a fraction in (0, 1], not {value!r}")
        if key in _WHOLE_FIELDS and number != int(number):
            raise InputError(f"hardware field {key} must be a whole number, not {value!r}")
        clean[key] = int(number) if key in _WHOLE_FIELDS else number
    return replace(gpu, **clean)


def load_hardware_file(path: str | Path) -> dict:
    """Read a hardware JSON file: either GPU fields, or a calibration profile with a "gpu" object in it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"hardware file {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"hardware file {path} is a folder, not a JSON file") from None
    except (OSError, ValueError) as error:  # ValueError: JSON errors and bytes that are not UTF-8 text
        raise InputError(f"hardware file {path} is not valid JSON: {error}") from None
    if isinstance(data, dict) and isinstance(data.get("gpu"), dict):
        data = data["gpu"]
    if not isinstance(data, dict):
        raise InputError(f"hardware file {path} must hold a JSON object of GPU fields")
    return data


def _preset(name: str) -> GPU | None:
    try:
        return get_gpu(name)
    except InputError:
        return None


def gpu_from_file(path: str | Path, base: GPU | None = None) -> GPU:
    """`base` with the file's figures, or, where the file names another GPU, that GPU with them: a preset's
    datasheet, or for a new name every required figure from the file (missing ones named) and the optional
    ones' defaults, which a warning and the GPU's source list."""
    data = load_hardware_file(path)
    name = data.get("name")
    if name is None:
        if base is None:
            raise InputError(f"hardware file {path} names no GPU ('name') and no GPU preset was given")
        return with_overrides(base, data)
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"hardware file {path}: name must be a GPU's name, not {name!r}")
    named = _preset(name)
    if named is not None and (base is None or named.name != base.name):
        base = named
    if named is None:
        missing = _FIELD_NAMES - _OPTIONAL_FIELDS - {key for key, value in data.items() if value is not None}
        if missing:
            raise InputError(f"hardware file {path} describes a new GPU {name!r} but lacks "
                             f"{', '.join(sorted(missing))} (every figure but {', '.join(sorted(_OPTIONAL_FIELDS))} is needed)")
        defaulted = sorted(_OPTIONAL_FIELDS - {"source"} - {key for key, value in data.items() if value is not None})
        note = ""
        if defaulted:
            note = (f"defaults for what the file leaves out: "
                    + ", ".join(f"{key}={_DEFAULTS[key]}" for key in defaulted))
            warnings.warn(f"hardware file {path} (new GPU {name!r}): {note}", stacklevel=2)
        required = {key: data[key] for key in _FIELD_NAMES - _OPTIONAL_FIELDS}
        source = str(data.get("source") or f"hardware file {path}")
        placeholders = {**{key: 1 for key in required}, "name": name}  # each replaced, and checked, by the file's
        kernels = replace(KERNELS["h100-sxm"], source="H100 SXM's fractions (a GPU without a preset); "
                          + KERNELS["h100-sxm"].source)
        base = with_overrides(GPU(**placeholders, kernels=kernels), required)
        data = {**data, "source": f"{source}; {note}" if note else source}
    return with_overrides(base, data)
