"""Build of tfprune and its extension `tfprune._C`.

The CPU C++ sources in csrc/ are always built (torch's cpp_extension, ninja), with torch's own C++ standard
(cpp_extension adds it: C++20 for torch 2.13). The CUDA sources (csrc/*.cu) join the build only where torch
has CUDA, torch's cpp_extension finds nvcc (CUDA_HOME), nvcc's CUDA major version equals torch's (cpp_extension
refuses a mismatch, e.g. nvcc 13 with a cu12 wheel) and TFPRUNE_NO_CUDA is unset; otherwise one line says why
they are skipped (CUDA tensors then take the torch reference paths; the Triton kernels are unaffected).
TFPRUNE_NO_EXT=1 skips the extension altogether (tfprune then runs on its torch references).
"""
import glob
import os
import re
import subprocess

from setuptools import find_packages, setup


def nvcc_version(cuda_home):
    """(major, minor) of CUDA_HOME's nvcc, or None when there is none or it does not answer."""
    if not cuda_home:
        return None
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"release (\d+)\.(\d+)", out)
    return (int(found.group(1)), int(found.group(2))) if found else None


def cuda_skip_reason(torch_cuda, cuda_home, nvcc, disabled):
    """None when the .cu sources can be built, else the reason (torch_cuda: torch.version.cuda; nvcc: nvcc_version)."""
    if disabled:
        return "TFPRUNE_NO_CUDA=1"
    if torch_cuda is None:
        return "this torch has no CUDA"
    if nvcc is None:
        return f"no nvcc found for torch's cpp_extension (CUDA_HOME={cuda_home})"
    if nvcc[0] != int(torch_cuda.split(".")[0]):
        return f"nvcc is CUDA {nvcc[0]}.{nvcc[1]} but torch was built with CUDA {torch_cuda} (majors differ)"
    return None


def extensions():
    """(ext_modules, cmdclass) of tfprune._C, printing one line when the CUDA sources are skipped."""
    if os.environ.get("TFPRUNE_NO_EXT") == "1":
        return [], {}
    import torch
    from torch.utils import cpp_extension

    sources = sorted(glob.glob("csrc/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/*.cu"))
    skip = cuda_skip_reason(torch.version.cuda, cpp_extension.CUDA_HOME, nvcc_version(cpp_extension.CUDA_HOME),
                            os.environ.get("TFPRUNE_NO_CUDA") == "1") if cuda_sources else "no CUDA sources"
    if cuda_sources and skip is not None:
        print(f"tfprune: building tfprune._C without its CUDA sources: {skip} (the Triton and torch paths still work)")
    cxx_flags = ["-O3", "-g0", "-fopenmp"]  # -g0: no debug info, twice faster builds; the C++ standard is torch's
    if skip is None:
        ext = cpp_extension.CUDAExtension(
            "tfprune._C", sources + cuda_sources, include_dirs=[os.path.abspath("csrc")],
            extra_compile_args={"cxx": cxx_flags + ["-DTFPRUNE_WITH_CUDA"], "nvcc": ["-O3", "-DTFPRUNE_WITH_CUDA"]},
            extra_link_args=["-fopenmp"])
    else:
        ext = cpp_extension.CppExtension("tfprune._C", sources, include_dirs=[os.path.abspath("csrc")],
                                         extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


if __name__ == "__main__":  # setuptools runs this file as __main__ (build_meta and `python setup.py ...`)
    ext_modules, cmdclass = extensions()
    setup(
        packages=find_packages(include=["tfprune", "tfprune.*"]) + ["tfprune.kernels"],
        package_dir={"tfprune.kernels": "kernels"},
        package_data={"tfprune.calib": ["data/parallel/*.txt"],
                      "tfprune.evaluation": ["data/README.md", "data/heldout/*.txt", "data/tasks/*/*.jsonl"]},
        ext_modules=ext_modules,
        cmdclass=cmdclass,
    )
