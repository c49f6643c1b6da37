"""Triton kernels of tfprune (installed as `tfprune.kernels`).

One kernel family per file, each with a launcher and a pure-torch reference. `tfprune.ops` dispatches
here for CUDA tensors (and for CPU tensors under TRITON_INTERPRET=1 when asked to).

    channel_stats  channel_stats_(x, tau, token_mask, sumsq, maxabs, count, n): running Σx², max|x|, count > τ
    scores         scores(w, factor, protect), score_stats(w, factor, protect, threshold) (OWL)
    nm_prune       nm_prune_(w, n, m, factor, protect, ...): score + N:M mask + apply in one pass
    row_prune      row_prune_(w, sparsity, factor, protect, ...): per-row bisection select + apply
    _common        the score order key, the fused score tile, bit-mask packing, launcher checks

The submodules import triton; import them only where triton can run (TRITON_INTERPRET=1 must be set
before triton's first import for CPU tensors).
"""
