"""The evaluation data that ships with tfprune (tfprune/evaluation/data, README there): a held-out parallel set
in 9 languages that no calibration set contains (other domains than the calibration corpus), and small XNLI- and
MARC-2-style task sets, written for the project."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..calib import ParallelCorpus, load_corpus

__all__ = ["heldout_corpus", "task_data_dir", "HELDOUT", "SHIPPED_TASKS"]

HELDOUT = "heldout"  # the --ppl name of the held-out parallel set
SHIPPED_TASKS = "builtin"  # the --data name of the shipped task folder


def _data() -> Path:
    return Path(str(resources.files("tfprune.evaluation") / "data"))


def heldout_corpus() -> ParallelCorpus:
    """48 aligned sentences (encyclopedic, news, instructions) in en de fr es ru zh ja ar hi."""
    return load_corpus(_data() / "heldout")


def task_data_dir() -> Path:
    """The folder of the shipped task sets: {xnli,marc2}/{lang}.jsonl (tfprune.evaluation.tasks' local layout)."""
    return _data() / "tasks"
