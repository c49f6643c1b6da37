"""Errors tfprune raises for bad input. Each names the problem; all are raised before anything is written."""

__all__ = [
    "TfpruneError",
    "ConfigError",
    "CalibrationError",
    "NonFiniteActivationError",
    "NonFiniteWeightError",
    "UnsupportedArchitectureError",
    "OutputExistsError",
    "RunMismatchError",
    "HessianError",
    "BackendError",
    "VocabError",
]


class TfpruneError(ValueError):
    """Base class of tfprune's input errors."""


class ConfigError(TfpruneError):
    """A pruning option is out of range or inconsistent (sparsity, N:M pattern, method, protection)."""


class CalibrationError(TfpruneError):
    """The calibration set is empty, too short, or cannot be built from the given corpus."""


class NonFiniteActivationError(TfpruneError):
    """A linear layer saw NaN or Inf activations during calibration."""


class NonFiniteWeightError(TfpruneError):
    """A weight of the model (any layer, norm, embedding or LM head) holds NaN or Inf."""


class UnsupportedArchitectureError(TfpruneError):
    """The model is not a decoder-only causal LM whose decoder blocks tfprune.engine.discovery can find."""


class OutputExistsError(TfpruneError):
    """The output directory exists and is not empty (pass overwrite=True / --overwrite)."""


class RunMismatchError(OutputExistsError):
    """A streaming run's partial output was started by a different command (options, model or calibration)."""


class HessianError(TfpruneError):
    """The OBS update (SparseGPT) could not factorize H even with more dampening, or its result overflowed."""


class BackendError(TfpruneError):
    """TFPRUNE_BACKEND asks for a backend that cannot run here (e.g. Triton without a GPU or interpreter)."""


class VocabError(TfpruneError):
    """Vocabulary trimming cannot be done safely: an unknown language, a script the tokenizer does not cover,
    a tokenizer type or checkpoint layout tfprune cannot trim."""
