// pybind11 module tfprune._C: thin bindings over the ops declared in ops.h.
#include "ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "tfprune C++/CUDA extension";
#ifdef TFPRUNE_WITH_CUDA
  module.attr("WITH_CUDA") = true;  // the sparse24 ops take CUDA tensors
#else
  module.attr("WITH_CUDA") = false;
#endif
  module.def("nm_first_violation", &tfprune::nm_first_violation, pybind11::arg("weight"), pybind11::arg("n"),
             pybind11::arg("m"),
             "First (row, group) of weight (out, in; fp32/fp64/fp16/bf16/fp8_e4m3fn/int8, CPU) whose group of m input weights "
             "holds more than n non-zeros, or (-1, -1) when weight is n:m sparse.");
  module.def("sparse24_pack", &tfprune::sparse24_pack, pybind11::arg("weight"), pybind11::arg("format"),
             "Pack a 2:4 weight (out, in; CPU or CUDA) into format 'cutlass' (fp16/bf16/int8; fp32 as 1:2) or "
             "'bitmask' (fp64/fp32/fp16/bf16/fp8_e4m3fn). Returns (values (out, in/2), meta, ok): meta is torch's "
             "reordered CUTLASS meta (int16; int32 for int8) or compressed-tensors' uint8 bitmask (out, ceil(in/8)); "
             "ok is a 0-dim bool tensor, False when a group holds more than two non-zeros (outputs then invalid).");
  module.def("sparse24_unpack", &tfprune::sparse24_unpack, pybind11::arg("values"), pybind11::arg("meta"),
             pybind11::arg("format"),
             "Inverse of sparse24_pack: (values, meta, format) -> (dense (out, 2 * values.size(1)), ok); ok is "
             "False when a bitmask nibble does not have exactly two bits set.");
  module.def("sparse24_bitmask_to_cutlass_meta", &tfprune::sparse24_bitmask_to_cutlass_meta,
             pybind11::arg("bitmask"),
             "Reordered int16 CUTLASS meta (out, in/16) of a 16-bit bitmask-packed weight (bitmask uint8 (out, in/8)), "
             "whose values are already the CUTLASS values. Returns (meta, ok).");
  module.def("decode24_pack", &tfprune::decode24_pack, pybind11::arg("weight"),
             "Pack a 2:4 weight (out, in; bf16/fp16/fp32, CPU) into tfprune's decode layout: (values (out, in/2), "
             "codes uint8 (out, ceil(in/8)), a nibble i0 | i1 << 2 per group, group 2b low in byte b). Raises naming "
             "the first row and group with more than two non-zeros.");
  module.def("decode24_unpack", &tfprune::decode24_unpack, pybind11::arg("values"), pybind11::arg("codes"),
             pybind11::arg("bitmask") = false,
             "Dense (out, 2 * values.size(1)) of decode24 (values, codes); bitmask=True reads compressed-tensors' "
             "bitmask in place of the codes.");
  module.def("decode24_linear", &tfprune::decode24_linear, pybind11::arg("x"), pybind11::arg("values"),
             pybind11::arg("codes"), pybind11::arg("bias") = pybind11::none(), pybind11::arg("bitmask") = false,
             pybind11::arg("out_dtype") = pybind11::none(), pybind11::arg("impl") = "auto",
             "x (..., K; M <= 16 rows in all; bf16/fp16/fp32, CPU) @ W^T (+ bias (N,)) with W in the decode layout (values (N, K/2) "
             "bf16/fp16/fp32, codes or, with bitmask=True, compressed-tensors' bitmask (N, ceil(K/8)) uint8), fp32 "
             "accumulation, output (..., N) in out_dtype (default x's). impl: 'auto', the AVX2 kernels 'gather' (M <= 4), "
             "'expand', 'bcast', the AVX512_BF16 kernel 'dpbf16' (bf16 x and values) or 'portable'.");
  module.def("decode24_isa", &tfprune::decode24_isa,
             "'avx512bf16' (bf16 on AVX512_BF16, AVX2 kernels otherwise), 'avx2' or 'portable': what decode24_linear "
             "runs on this CPU.");
  module.def("dense_decode_linear", &tfprune::dense_decode_linear, pybind11::arg("x"), pybind11::arg("weight"),
             pybind11::arg("bias") = pybind11::none(), pybind11::arg("out_dtype") = pybind11::none(),
             "x (M <= 16, K; bf16, CPU) @ W^T (+ bias (N,)) for a dense bf16 W (N, K), fp32 accumulation, output (M, N) "
             "in out_dtype (default bf16). CPUs with AVX512_BF16 only (dense_decode_available()).");
  module.def("dense_decode_available", &tfprune::dense_decode_available,
             "Whether this CPU runs dense_decode_linear (AVX512_BF16).");
}
