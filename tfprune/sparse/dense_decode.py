"""DenseDecodeLinear: the decode step of a layer that stays dense, the LM head above all (168M of Gemma 3 270M's
268M parameters; trimming the vocabulary shrinks it, 2:4 does not touch it).

For at most MAX_ROWS tokens of bfloat16 x on a CPU with AVX512_BF16, without autograd, the forward runs
tfprune._C's dense_decode_linear (blocks of 8 rows of W, vdpbf16ps, a software prefetch: ~2x torch's bf16 GEMV
on the development machine, benchmarks/README.md): fp32 sums in another order than torch's, and vdpbf16ps
treats bf16 subnormals as zero. Anything else (prefill, training, other dtypes and devices) is F.linear. The
module is an nn.Linear holding the original's own weight and bias Parameters, so a head tied to the input
embeddings stays tied, a state dict keeps its names, and code that expects an nn.Linear head (transformers'
resize_token_embeddings, adapters) still finds one.

    decode_head_(model)   # model.get_output_embeddings() -> DenseDecodeLinear, in place
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._ext import extension

__all__ = ["MAX_ROWS", "DenseDecodeLinear", "kernel_available", "decode_head_"]

MAX_ROWS = 16  # tokens per forward the kernel takes (the decode24 kernels' limit too)


def kernel_available() -> bool:
    """Whether this machine runs the dense decode kernel (tfprune._C built, a CPU with AVX512_BF16)."""
    return extension is not None and bool(extension.dense_decode_available())


class DenseDecodeLinear(nn.Linear):
    """F.linear(x, weight, bias) for x [..., in_features]; the kernel for <= MAX_ROWS rows of bf16 x and a bf16
    weight [out_features, in_features] on the CPU when no gradient is needed (output bf16, fp32 accumulation),
    F.linear otherwise."""

    def __init__(self, linear: nn.Linear):
        nn.Module.__init__(self)  # not nn.Linear's: it would allocate a new weight
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # the same Parameter: ties and state-dict names survive
        self.bias = linear.bias
        self._kernel = kernel_available()

    def uses_kernel(self, x: torch.Tensor) -> bool:
        """Whether the forward of x [..., in_features] runs the kernel."""
        return (self._kernel and x.device.type == "cpu" and x.dtype == torch.bfloat16 and
                self.weight.dtype == torch.bfloat16 and self.weight.device.type == "cpu" and
                x.shape[-1] == self.in_features and 1 <= x.numel() // max(1, self.in_features) <= MAX_ROWS and
                self.weight.is_contiguous() and
                not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad or
                                                  (self.bias is not None and self.bias.requires_grad))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.uses_kernel(x):
            return F.linear(x, self.weight, self.bias)
        y = extension.dense_decode_linear(x.reshape(-1, self.in_features), self.weight, self.bias, torch.bfloat16)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"kernel={'on' if self._kernel else 'off (F.linear)'}")


def decode_head_(model: nn.Module) -> str | None:
    """Swap the model's output embeddings (an nn.Linear LM head) for a DenseDecodeLinear in place. Returns None,
    or why not (no such head, not an nn.Linear, or one with accelerate hooks: a device map or offloading, whose
    hook the swap would drop); a swapped one is left as it is."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, DenseDecodeLinear):
        return None
    if type(head) is not nn.Linear:
        return f"the output embeddings are {type(head).__name__}, not an nn.Linear"
    if hasattr(head, "_hf_hook"):
        return "the LM head has accelerate hooks (device map or offloading)"
    name = next(name for name, module in model.named_modules() if module is head)
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, DenseDecodeLinear(head))
    return None
