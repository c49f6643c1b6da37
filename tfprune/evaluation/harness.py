"""lm-evaluation-harness (`lm-eval`) tasks on an in-memory (pruned) model, through lm-eval's Python API."""
from __future__ import annotations

import logging

from torch import nn

from ..errors import TfpruneError

__all__ = ["HARNESS_TASKS", "require_lm_eval", "run_harness"]

log = logging.getLogger("tfprune")

# The multilingual tasks the issue names; any lm-eval task or group name is accepted.
HARNESS_TASKS = ("xnli", "xcopa", "xstorycloze", "pawsx", "xwinograd")


def _metrics(values: dict) -> dict[str, float]:
    """{'acc,none': 0.5, 'alias': 'xnli_en', ...} -> {'acc': 0.5, ...}: numeric metrics, filter suffix dropped."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        metric, _, filter_name = key.partition(",")
        out[metric if filter_name in ("", "none") else f"{metric},{filter_name}"] = float(value)
    return out


def require_lm_eval():
    """The lm_eval module, or TfpruneError saying how to install it."""
    try:
        import lm_eval
        import lm_eval.models.huggingface  # noqa: F401  (the HF backend is an extra since lm-eval 0.4.10)
    except ImportError as error:
        raise TfpruneError(f"--harness needs lm-evaluation-harness with its HF backend: pip install 'lm_eval[hf]' "
                           f"({error})") from None
    return lm_eval


def run_harness(model: nn.Module, tokenizer, tasks: list[str], batch_size: int = 8, limit: int | None = None,
                num_fewshot: int = 0, seed: int = 0) -> dict:
    """Run lm-eval `tasks` zero-shot (by default) on `model` as it is in memory.

    Returns {"results": {task: {metric: value}}, "lm_eval_version": str | None, "tasks": [...]}.
    Raises TfpruneError when lm-eval is not installed.
    """
    if not tasks:
        raise TfpruneError("--harness needs at least one task name, e.g. xnli,xcopa")
    lm_eval = require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    log.info("lm-eval: %s on %s", ",".join(tasks), type(model).__name__)
    output = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
                                     random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed)
    if not output or "results" not in output:
        raise TfpruneError("lm-eval returned no results")
    return {
        "tasks": list(tasks),
        "results": {task: _metrics(values) for task, values in output["results"].items()},
        "lm_eval_version": getattr(lm_eval, "__version__", None),
    }
