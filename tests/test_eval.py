"""`tfprune eval`: the zero-shot choice rule (highest mean per-token log-probability), the paired bootstrap,
local data, perplexity, the CLI end to end against a dense baseline, and the lm-eval adapter (mocked)."""
import json
import math
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from tfprune.cli import main
from tfprune.errors import TfpruneError
from tfprune.evaluation import (MARC2, XNLI, EvalConfig, Task, build_report, choose, evaluate_model, evaluate_task,
                                load_examples, load_task_data, mean_logprobs, paired_bootstrap, perplexity,
                                run_harness, sample_examples)


pytestmark = pytest.mark.usefixtures("one_thread")


def _write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")


@pytest.fixture
def eval_data(tmp_path):
    """DIR/{xnli,marc2}/{en,de}.jsonl with a few examples each."""
    root = tmp_path / "data"
    for lang, (premise, hypothesis) in {"en": ("The cat sleeps on the mat.", "An animal is resting."),
                                        "de": ("Die Katze schläft auf der Matte.", "Ein Tier ruht.")}.items():
        _write_jsonl(root / "xnli" / f"{lang}.jsonl",
                     [{"premise": f"{premise} ({i})", "hypothesis": hypothesis, "label": i % 3} for i in range(9)])
        _write_jsonl(root / "marc2" / f"{lang}.jsonl",
                     [{"text": f"Review number {i}: it broke after a day." if i % 2 else f"Review {i}: I love it.",
                       "stars": [5, 1, 4, 2, 3][i % 5]} for i in range(10)])
    return root


# -- the choice rule -------------------------------------------------------------------------------------------


def _direct_mean_logprob(model, tokenizer, text):
    """log p(t_i | t_<i) averaged over every token but the first, one unpadded forward pass."""
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].double()
    logp = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None]).squeeze(1)
    return float(logp.mean())


def test_choice_is_highest_mean_logprob_direct_computation(tiny_model):
    model, tokenizer = tiny_model("llama")
    examples = [{"premise": "The cat sleeps on the mat.", "hypothesis": "An animal rests.", "label": 0},
                {"premise": "Il pleut depuis trois jours.", "hypothesis": "Le soleil brille.", "label": 2},
                {"premise": "Er kauft Brot.", "hypothesis": "Er ist im Laden.", "label": 1}]
    result = evaluate_task(model, tokenizer, XNLI, examples, batch_size=4)  # batched and padded
    for example, scores, prediction in zip(examples, result["scores"], result["predictions"]):
        prompts = XNLI.prompts(example)
        assert prompts[1] == f"{example['premise']}, right? Also, {example['hypothesis']}"
        direct = [_direct_mean_logprob(model, tokenizer, prompt) for prompt in prompts]
        assert scores == pytest.approx(direct, abs=1e-5)
        assert prediction == int(np.argmax(direct))
    assert result["accuracy"] == pytest.approx(np.mean([p == e["label"] for p, e in zip(result["predictions"], examples)]))


class _UnigramLM(nn.Module):
    """log p(token) fixed per token id, whatever the context."""

    def __init__(self, logp: torch.Tensor):
        super().__init__()
        self.logp = nn.Parameter(logp, requires_grad=False)

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return types.SimpleNamespace(logits=self.logp.expand(*input_ids.shape, -1))


class _CharTokenizer:
    pad_token_id = eos_token_id = 0

    def __call__(self, text):
        return {"input_ids": [0] + [ord(c) - ord("a") + 1 for c in text]}


def test_mean_not_sum_decides():
    # 'a' is likely, 'b' unlikely: "b" has the higher sum (-3.0 > -3.4), "aaaab" the higher mean (-0.68 > -3.0).
    raw = torch.full((27,), -10.0)
    raw[1], raw[2] = -0.1, -3.0
    logp = torch.log_softmax(raw, 0)
    la, lb = float(logp[1]), float(logp[2])
    assert lb > 4 * la + lb and (4 * la + lb) / 5 > lb  # the sum and the mean disagree
    model, tokenizer = _UnigramLM(logp), _CharTokenizer()
    task = Task("toy", "", ("xx",), ("b", "aaaab"), "{label}", ())
    means = mean_logprobs(model, tokenizer, ["b", "aaaab"])
    assert means.tolist() == pytest.approx([lb, (4 * la + lb) / 5])
    result = evaluate_task(model, tokenizer, task, [{"label": 1}])
    assert result["predictions"] == [1] and result["accuracy"] == 1.0
    ppl, tokens = perplexity(model, tokenizer, ["b", "aaaab"])
    assert tokens == 6 and ppl == pytest.approx(math.exp(-(4 * la + 2 * lb) / 6))


def test_choose_ties_go_to_the_lower_label():
    scores = torch.tensor([[-1.0, -1.0, -2.0], [-3.0, -0.5, -0.5], [-2.0, -1.0, -0.1]], dtype=torch.float64)
    assert choose(scores).tolist() == [0, 1, 2]


# -- paired bootstrap ------------------------------------------------------------------------------------------


def test_bootstrap_seeded_and_reproducible():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    first, again = paired_bootstrap(a, b, 500, seed=7), paired_bootstrap(a, b, 500, seed=7)
    assert first == again
    assert first.delta == pytest.approx(a.mean() - b.mean())
    assert first.ci_low <= first.delta <= first.ci_high
    assert paired_bootstrap(a, b, 500, seed=8) != first
    same = paired_bootstrap(a, a, 200, seed=0)
    assert same.delta == 0 and same.p_value == 1.0
    better = paired_bootstrap(np.ones(100), np.r_[np.ones(60), np.zeros(40)], 500, seed=0)
    assert better.delta == pytest.approx(0.4) and better.p_value == 0.0


def test_bootstrap_stratified_by_language():
    a = [np.ones(10), np.zeros(30)]
    b = [np.zeros(10), np.zeros(30)]
    result = paired_bootstrap(a, b, 300, seed=0)
    assert result.delta == pytest.approx(0.5)  # mean of per-language deltas (1.0, 0.0), not pooled 0.25
    assert result.ci_low == result.ci_high == pytest.approx(0.5)  # every resample keeps both strata whole


# -- data ------------------------------------------------------------------------------------------------------


def test_local_data_and_seeded_sampling(eval_data, tmp_path):
    xnli = load_examples(XNLI, "de", eval_data)
    assert len(xnli) == 9 and set(xnli[0]) == {"premise", "hypothesis", "label"}
    marc = load_examples(MARC2, "en", eval_data)
    assert len(marc) == 8 and {e["label"] for e in marc} == {0, 1}  # 3-star reviews dropped; 4-5 → 1
    picked = sample_examples(xnli, 4, seed=3, key="xnli:de")
    assert picked == sample_examples(xnli, 4, seed=3, key="xnli:de") and len(picked) == 4
    assert sample_examples(xnli, 100, seed=3) == xnli
    data = load_task_data(EvalConfig(tasks=("xnli",), n=5, data=str(eval_data)))
    assert set(data["xnli"]) == {"de", "en"} and all(len(v) == 5 for v in data["xnli"].values())
    _write_jsonl(tmp_path / "bad" / "xnli" / "en.jsonl", [{"premise": "p", "label": 0}])
    with pytest.raises(TfpruneError, match=r"en.jsonl:1: .*hypothesis"):
        load_examples(XNLI, "en", tmp_path / "bad")
    with pytest.raises(TfpruneError, match="does not exist"):
        load_examples(XNLI, "fr", eval_data)


def test_report_against_baseline(tiny_model, eval_data):
    config = EvalConfig(tasks=("xnli", "marc2"), n=6, data=str(eval_data), resamples=200, ppl="builtin", ppl_n=4,
                        langs=("en", "de"))
    data = load_task_data(config)
    dense, tokenizer = tiny_model("llama")
    other, _ = tiny_model("llama")
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    raw_dense = evaluate_model(dense, tokenizer, config, data)
    raw_other = evaluate_model(other, tokenizer, config, data)
    report = build_report(raw_other, raw_dense, config, ("other", "dense"))
    row = report["tasks"]["xnli"]["languages"]["de"]
    assert row["baseline_accuracy"] == raw_dense["tasks"]["xnli"]["de"]["accuracy"]
    assert 0.0 <= row["bootstrap"]["p_value"] <= 1.0
    average = report["tasks"]["xnli"]["average_non_en"]
    assert average["languages"] == 1 and average["accuracy"] == row["accuracy"]
    assert set(report["perplexity"]) == {"en", "de"} and report["perplexity"]["de"]["baseline_ppl"] > 1


# -- CLI -------------------------------------------------------------------------------------------------------


def test_cli_eval_pruned_vs_dense(tmp_path, eval_data, capsys):
    pruned = tmp_path / "pruned"
    assert main(["prune", "builtin:llama", "--out", str(pruned), "--pattern", "2:4", "--nsamples", "4",
                 "--seqlen", "32", "--quiet", "--reconstruct", "4"]) == 0
    out = tmp_path / "eval.json"
    assert main(["eval", str(pruned), "--baseline", "builtin:llama", "--data", str(eval_data), "--n", "6",
                 "--langs", "en,de", "--ppl-n", "3", "--bootstrap", "100", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "avg-xx" in text and "perplexity" in text
    report = json.loads(out.read_text())
    assert report["baseline"] == "builtin:llama"
    for task in ("xnli", "marc2"):
        assert set(report["tasks"][task]["languages"]) == {"en", "de"}
        assert "p_value" in report["tasks"][task]["average_non_en"]["bootstrap"]
        assert len(report["predictions"]["model"][task]["de"]) == 6
    assert main(["eval", "builtin:llama", "--tasks", "nope", "--data", str(eval_data)]) == 2
    assert "unknown task" in capsys.readouterr().err


# -- lm-eval -----------------------------------------------------------------------------------------------------


def test_harness_without_lm_eval_is_a_clear_error(monkeypatch, capsys, tiny_model):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    model, tokenizer = tiny_model("llama")
    with pytest.raises(TfpruneError, match="pip install 'lm_eval\\[hf\\]'"):
        run_harness(model, tokenizer, ["xnli"])
    assert main(["eval", "builtin:llama", "--harness", "xnli"]) == 2
    assert "lm-evaluation-harness" in capsys.readouterr().err


def test_harness_adapter_with_mocked_lm_eval(monkeypatch, tmp_path, capsys):
    calls = {}

    class HFLM:
        def __init__(self, pretrained, tokenizer, batch_size):
            calls["hflm"] = (pretrained, tokenizer, batch_size)

    def simple_evaluate(model, tasks, num_fewshot, limit, **seeds):
        calls["evaluate"] = (model, tasks, num_fewshot, limit, seeds)
        return {"results": {task: {"alias": task, "acc,none": 0.5, "acc_stderr,none": 0.01, "acc,strict": 0.25}
                            for task in tasks}}

    lm_eval = types.ModuleType("lm_eval")
    lm_eval.simple_evaluate, lm_eval.__version__ = simple_evaluate, "0.4.test"
    models = types.ModuleType("lm_eval.models")
    huggingface = types.ModuleType("lm_eval.models.huggingface")
    huggingface.HFLM = HFLM
    lm_eval.models, models.huggingface = models, huggingface
    for name, module in (("lm_eval", lm_eval), ("lm_eval.models", models), ("lm_eval.models.huggingface", huggingface)):
        monkeypatch.setitem(sys.modules, name, module)

    out = tmp_path / "harness.json"
    assert main(["eval", "builtin:llama", "--harness", "xnli,xcopa", "--limit", "5", "--batch-size", "2",
                 "--out", str(out)]) == 0
    model, tokenizer, batch_size = calls["hflm"]
    assert isinstance(model, nn.Module) and tokenizer is not None and batch_size == 2
    lm, tasks, shots, limit, seeds = calls["evaluate"]
    assert isinstance(lm, HFLM) and tasks == ["xnli", "xcopa"] and shots == 0 and limit == 5
    report = json.loads(out.read_text())
    assert report["harness"]["model"]["results"]["xcopa"] == {"acc": 0.5, "acc_stderr": 0.01, "acc,strict": 0.25}
    assert report["harness"]["model"]["lm_eval_version"] == "0.4.test"
    assert report["perplexity"] == {} and report["tasks"] == {}
    assert "xcopa" in capsys.readouterr().out


def test_cli_eval_compressed_tensors_checkpoint(tmp_path, eval_data, tiny_model, capsys):
    """A 2:4 checkpoint written packed (compressed-tensors) is evaluated through tfprune.from_pretrained."""
    from tfprune.bench import prune_model_24_
    from tfprune.sparse import save_compressed_tensors

    model, tokenizer = tiny_model("llama")
    prune_model_24_(model)
    save_compressed_tensors(model, tmp_path / "packed")
    tokenizer.save_pretrained(tmp_path / "packed")
    out = tmp_path / "eval.json"
    assert main(["eval", str(tmp_path / "packed"), "--baseline", "builtin:llama", "--tasks", "xnli", "--langs", "en",
                 "--n", "3", "--data", str(eval_data), "--ppl", "none", "--bootstrap", "50", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    direct = evaluate_task(model, tokenizer, XNLI, load_task_data(EvalConfig(
        tasks=("xnli",), langs=("en",), n=3, data=str(eval_data)))["xnli"]["en"])
    assert report["predictions"]["model"]["xnli"]["en"] == direct["predictions"]
