"""Errors tfprune raises for bad input. Each names the problem; all are raised before anything is written."""

__all__ = [
    "TfpruneError",
    "ConfigError",
    "CalibrationError",
    "NonFiniteActivationError",
    "UnsupportedArchitectureError",
    "OutputExistsError",
]


class TfpruneError(ValueError):
    """Base class of tfprune's input errors."""


class ConfigError(TfpruneError):
    """A pruning option is out of range or inconsistent (sparsity, N:M pattern, method, protection)."""


class CalibrationError(TfpruneError):
    """The calibration set is empty, too short, or cannot be built from the given corpus."""


class NonFiniteActivationError(TfpruneError):
    """A linear layer saw NaN or Inf activations during calibration."""


class UnsupportedArchitectureError(TfpruneError):
    """The model family has no adapter in tfprune.engine.adapters."""


class OutputExistsError(TfpruneError):
    """The output directory exists and is not empty (pass overwrite=True / --overwrite)."""
