"""Multilingual evaluation of pruned models: zero-shot XNLI / MARC-2 by mean per-token log-probability,
paired bootstrap against the dense model, perplexity per language, and lm-eval tasks (`--harness`)."""
from .bootstrap import BootstrapResult, paired_bootstrap
from .harness import HARNESS_TASKS, run_harness
from .runner import EvalConfig, build_report, evaluate_model, evaluate_task, format_report, load_task_data
from .scoring import choose, encode, mean_logprobs, perplexity, sequence_logprobs
from .tasks import MARC2, TASKS, XNLI, Task, load_examples, sample_examples

__all__ = [
    "BootstrapResult",
    "paired_bootstrap",
    "HARNESS_TASKS",
    "run_harness",
    "EvalConfig",
    "build_report",
    "evaluate_model",
    "evaluate_task",
    "format_report",
    "load_task_data",
    "choose",
    "encode",
    "mean_logprobs",
    "perplexity",
    "sequence_logprobs",
    "MARC2",
    "TASKS",
    "XNLI",
    "Task",
    "load_examples",
    "sample_examples",
]
