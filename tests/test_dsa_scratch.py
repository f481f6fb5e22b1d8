"""DSA prefill's per-query scratch (kvplan.kinds.dsa.DSA.query_scratch_bytes) for each path, derived by hand for
llama-3.1-8b re-cast to DSA: 32 heads, latent 512 + rope 64, 64 indexer heads of 128, top-k 2048, bf16. The
kernel path's figure is checked on an H100 by kvplan.profilers.bench_prefill (kernels_peak_bytes beside
kernels_peak_bytes_estimate, examples/bench/bench_prefill-h100-dsa.csv)."""

from kvplan.kinds.dsa import topk_layout
from kvplan.presets import get_preset
from kvplan.recast import recast

QUERIES = 64 * 128 + 64 * 1 * 4  # FP8 indexer queries, one fp32 scale per 128 elements of each head
WEIGHTS = 64 * 2  # the chunk's copy of the indexer head weights (bf16)


def _dsa():
    return recast(get_preset("llama-3.1-8b"), "dsa").attention


def test_topk_layout_at_128k_and_32k():
    # G: the smallest power of two leaving at most 4 x 2048 groups; W: 2 x 2048 candidate slots.
    assert topk_layout(131072, 2048) == (16, 8192, 8192, 4096)
    assert topk_layout(32768, 2048) == (4, 8192, 8192, 4096)
    assert topk_layout(3000, 2048) == (1, 3000, 4096, 4096)


def test_kernel_path_holds_the_selection_buffers_or_the_attention_operands_not_gathered_latents():
    # Selecting at 128k: fp32 scores, int32 top-k, int32 group maxima, candidate keys and positions (int32 each).
    selecting = 131072 * 4 + 2048 * 4 + 8192 * 4 + 4096 * 8
    # Attending: the top-k, and per head the absorbed query (512 + 64) and the latent output (512), bf16.
    attending = 2048 * 4 + 32 * (576 + 512) * 2
    assert selecting > attending
    assert _dsa().query_scratch_bytes(131072, 2, 1, kernels=True) == QUERIES + WEIGHTS + selecting
    # 1,500 tokens: every key selected (no selection buffers); the attention moment is the larger.
    assert _dsa().query_scratch_bytes(1500, 2, 1, kernels=True) == QUERIES + WEIGHTS + 1500 * 4 + 32 * 1088 * 2


def test_pytorch_path_holds_the_gathered_latents():
    # fp32 scores, int64 top-k, 2048 gathered [latent | rope] rows, scores and probabilities of 32 heads over them.
    held = 131072 * 4 + 2048 * 8 + 2048 * 576 * 2 + 2 * 32 * 2048 * 2
    assert _dsa().query_scratch_bytes(131072, 2, 1, kernels=False) == QUERIES + held


def test_prefill_scratch_follows_flash():
    dsa = _dsa()
    assert dsa.prefill_scratch_bytes(1, 131072, 131072, 2, 1, True) == 1024 * dsa.query_scratch_bytes(131072, 2, 1)
    assert dsa.prefill_scratch_bytes(1, 131072, 131072, 2, 1, False) == 1024 * dsa.query_scratch_bytes(
        131072, 2, 1, kernels=False)
