"""Build of tfprune and its extension `tfprune._C`.

The CPU C++ sources in csrc/ are always built (torch's cpp_extension, ninja). The CUDA sources
(csrc/*.cu) join the build only where torch has CUDA and nvcc is found, and TFPRUNE_NO_CUDA is unset.
TFPRUNE_NO_EXT=1 skips the extension altogether (tfprune then runs on its torch references).
"""
import glob
import os
import shutil

from setuptools import find_packages, setup

ext_modules, cmdclass = [], {}
if os.environ.get("TFPRUNE_NO_EXT") != "1":
    import torch
    from torch.utils import cpp_extension

    sources = sorted(glob.glob("csrc/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/*.cu"))
    with_cuda = (
        bool(cuda_sources)
        and torch.version.cuda is not None
        and shutil.which("nvcc") is not None
        and os.environ.get("TFPRUNE_NO_CUDA") != "1"
    )
    cxx_flags = ["-O3", "-g0", "-fopenmp", "-std=c++17"]  # -g0: no debug info, twice faster builds
    if with_cuda:
        ext = cpp_extension.CUDAExtension(
            "tfprune._C",
            sources + cuda_sources,
            include_dirs=[os.path.abspath("csrc")],
            extra_compile_args={"cxx": cxx_flags + ["-DTFPRUNE_WITH_CUDA"],
                                "nvcc": ["-O3", "-std=c++17", "-DTFPRUNE_WITH_CUDA"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = cpp_extension.CppExtension(
            "tfprune._C",
            sources,
            include_dirs=[os.path.abspath("csrc")],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    ext_modules = [ext]
    cmdclass = {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}

setup(
    packages=find_packages(include=["tfprune", "tfprune.*"]) + ["tfprune.kernels"],
    package_dir={"tfprune.kernels": "kernels"},
    package_data={"tfprune.calib": ["data/parallel/*.txt", "data/README.md"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
