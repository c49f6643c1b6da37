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


def _hand_over_to_the_installed_kernels() -> None:
    """Imported as the top-level package `kernels`, this folder shadows the installed package of that name
    (Hugging Face's hub kernels, which transformers >= 5.25 imports as it loads): a checkout's root on sys.path
    does that (`python -m pytest` or `python -c` run there, PYTHONPATH=checkout). Put the installed package in
    sys.modules in this module's place (the import statement returns it), or say that none is installed."""
    import importlib.machinery
    import importlib.util
    import os
    import sys

    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != checkout]
    spec = importlib.machinery.PathFinder.find_spec("kernels", path)
    if spec is None:
        del sys.modules["kernels"]
        raise ModuleNotFoundError("No module named 'kernels' (the checkout's kernels/ folder is tfprune.kernels)",
                                  name="kernels")
    module = importlib.util.module_from_spec(spec)
    sys.modules["kernels"] = module
    spec.loader.exec_module(module)


if __name__ == "kernels":
    _hand_over_to_the_installed_kernels()
