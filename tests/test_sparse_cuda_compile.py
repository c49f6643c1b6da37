"""Every CUDA source of csrc/ compiles with nvcc for sm_80 and sm_90a, so device-code errors fail here even
on machines without a GPU (the extension builds them only where torch has CUDA). The sm_80 build also links
the 2:4 kernels with a host file that takes the address of every launcher declared in sparse24_cuda.h, so a
declaration that drifts from its definition fails too."""
import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "csrc"
SOURCES = sorted(CSRC.glob("*.cu"))
LAUNCHERS = ["sparse24_pack_cutlass", "sparse24_unpack_cutlass", "sparse24_pack_bitmask", "sparse24_unpack_bitmask",
             "sparse24_bitmask_to_cutlass_meta"]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90a"])
@pytest.mark.parametrize("source", SOURCES, ids=[path.name for path in SOURCES])
def test_nvcc_compiles(source, arch, tmp_path):
    command = ["nvcc", "-std=c++17", f"-arch={arch}", "-O2", "-Werror", "all-warnings", f"-I{CSRC}", str(source)]
    if arch == "sm_80" and source.name == "sparse24_cuda.cu":
        host = tmp_path / "launchers.cpp"
        addresses = ", ".join(f"(void*)&tfprune::cuda::{name}" for name in LAUNCHERS)
        host.write_text('#include "sparse24_cuda.h"\n#include <cstdio>\n'
                        f"int main() {{ void* launchers[] = {{{addresses}}}; std::printf(\"%p\", launchers[0]); }}\n")
        command += [str(host), "-o", str(tmp_path / "launchers")]
    else:
        command += ["-c", "-o", str(tmp_path / f"{source.stem}.o")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
