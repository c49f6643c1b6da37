"""Every CUDA source of csrc/ compiles with nvcc for sm_80 and sm_90a, so device-code errors fail here even
on machines without a GPU (the extension builds them only where torch has CUDA), in C++20 (what torch 2.13's
cpp_extension passes, which setup.py follows) and C++17 (older torch releases). The sm_80 build also links
the 2:4 kernels with a host file that takes the address of every launcher declared in sparse24_cuda.h, so a
declaration that drifts from its definition fails too. And setup.py's rule for building them at all."""
import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "csrc"
SOURCES = sorted(CSRC.glob("*.cu"))
LAUNCHERS = ["sparse24_pack_cutlass", "sparse24_unpack_cutlass", "sparse24_pack_bitmask", "sparse24_unpack_bitmask",
             "sparse24_bitmask_to_cutlass_meta"]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("arch,std", [("sm_80", "c++20"), ("sm_90a", "c++20"), ("sm_80", "c++17")])
@pytest.mark.parametrize("source", SOURCES, ids=[path.name for path in SOURCES])
def test_nvcc_compiles(source, arch, std, tmp_path):
    command = ["nvcc", f"-std={std}", f"-arch={arch}", "-O2", "-Werror", "all-warnings", f"-I{CSRC}", str(source)]
    if arch == "sm_80" and std == "c++20" and source.name == "sparse24_cuda.cu":
        host = tmp_path / "launchers.cpp"
        addresses = ", ".join(f"(void*)&tfprune::cuda::{name}" for name in LAUNCHERS)
        host.write_text('#include "sparse24_cuda.h"\n#include <cstdio>\n'
                        f"int main() {{ void* launchers[] = {{{addresses}}}; std::printf(\"%p\", launchers[0]); }}\n")
        command += [str(host), "-o", str(tmp_path / "launchers")]
    else:
        command += ["-c", "-o", str(tmp_path / f"{source.stem}.o")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


def _setup_module():
    spec = importlib.util.spec_from_file_location("tfprune_setup", CSRC.parent / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: defines the helpers, builds nothing
    return module


@pytest.mark.parametrize("torch_cuda,nvcc,disabled,expected", [
    ("12.8", (12, 4), False, None),  # minors may differ (cpp_extension warns)
    ("12.8", (13, 0), False, "nvcc is CUDA 13.0 but torch was built with CUDA 12.8 (majors differ)"),
    ("13.0", (13, 0), True, "TFPRUNE_NO_CUDA=1"),
    (None, (13, 0), False, "this torch has no CUDA"),
    ("13.0", None, False, "no nvcc found for torch's cpp_extension (CUDA_HOME=/usr/local/cuda)"),
])
def test_cuda_sources_only_when_the_cuda_majors_agree(torch_cuda, nvcc, disabled, expected):
    assert _setup_module().cuda_skip_reason(torch_cuda, "/usr/local/cuda", nvcc, disabled) == expected


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_nvcc_version_is_read():
    cuda_home = str(Path(shutil.which("nvcc")).resolve().parents[1])
    version = _setup_module().nvcc_version(cuda_home)
    assert version is not None and version[0] >= 11
    assert _setup_module().nvcc_version("/nonexistent") is None
