"""`tfprune.kernels` from a plain checkout. The Triton kernels live in the repository's top-level kernels/
folder, which setup.py installs as tfprune.kernels (package_dir); an install (editable or not) resolves it.
With only the checkout on the import path (`make gpu-check` on a machine without pip), nothing maps it, so
this registers that folder as tfprune.kernels, once, when tfprune is imported."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

__all__ = ["register_checkout_kernels"]


def register_checkout_kernels() -> bool:
    """Make `import tfprune.kernels` work from a checkout; True when this registered the folder."""
    if "tfprune.kernels" in sys.modules or importlib.util.find_spec("tfprune.kernels") is not None:
        return False
    folder = Path(__file__).resolve().parent.parent / "kernels"
    if not (folder / "__init__.py").is_file():
        return False
    spec = importlib.util.spec_from_file_location("tfprune.kernels", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["tfprune.kernels"] = module
    spec.loader.exec_module(module)
    setattr(sys.modules["tfprune"], "kernels", module)
    return True


register_checkout_kernels()
