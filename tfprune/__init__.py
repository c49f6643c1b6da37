"""tfprune: prune multilingual LLMs while retaining the large-magnitude features of translation.

    import tfprune
    report = tfprune.prune(model, tokenizer, tfprune.PruneConfig(sparsity=0.5, pattern="2:4"))
"""
from . import _checkout  # noqa: F401  (first: registers tfprune.kernels from a plain checkout, see there)
from . import ops
from .calib import ParallelCorpus, builtin_corpus, load_corpus
from .config import PruneConfig
from .engine import prune
from .errors import (CalibrationError, ConfigError, NonFiniteActivationError, OutputExistsError, TfpruneError,
                     UnsupportedArchitectureError)
from .io import save_pruned
from .report import LayerReport, PruneReport
from .sparse import from_pretrained, sparsify

__version__ = "0.1.0"

__all__ = [
    "ops",
    "PruneConfig",
    "prune",
    "PruneReport",
    "LayerReport",
    "ParallelCorpus",
    "builtin_corpus",
    "load_corpus",
    "save_pruned",
    "sparsify",
    "from_pretrained",
    "TfpruneError",
    "ConfigError",
    "CalibrationError",
    "NonFiniteActivationError",
    "UnsupportedArchitectureError",
    "OutputExistsError",
]
