"""Triton kernels of tfprune (installed as `tfprune.kernels`).

One kernel family per file, each with a launcher and a pure-torch reference. `tfprune.ops` dispatches
here for CUDA tensors (and for CPU tensors under TRITON_INTERPRET=1 when asked to).
"""
