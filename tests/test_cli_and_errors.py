"""The `tfprune` CLI end to end, and a clear error for every bad input, raised before anything is written."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import tfprune
from tfprune import PruneConfig
from tfprune.cli import main
from tfprune.errors import (CalibrationError, ConfigError, NonFiniteActivationError, NonFiniteWeightError,
                            OutputExistsError, UnsupportedArchitectureError)
from tfprune.io import atomic_output_dir
from tfprune.report import PruneReport

FAST = ["--nsamples", "4", "--seqlen", "48", "--quiet"]
FEW_STEPS = ["--reconstruct", "4"]  # at 2:4, where the test is not about the fit (the default 256: time)


def test_cli_prune_and_inspect(tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(["prune", "builtin:gpt2", "--out", str(out), "--pattern", "2:4", "--langs", "de,ru,zh", *FAST,
                 *FEW_STEPS]) == 0
    record = json.loads((out / "tfprune.json").read_text())
    assert record["config"]["pattern"] == "2:4" and record["config"]["langs"] == ["de", "ru", "zh"]
    assert record["report"]["sparsity"] == pytest.approx(0.5)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 5, 9]])).logits).all()
    assert main(["inspect", str(out)]) == 0
    assert "8 of" in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_paper_recipe_and_user_corpus(tmp_path):
    corpus = tmp_path / "corpus.tsv"
    corpus.write_text("en\tde\n" + "".join(f"Sentence number {i}.\tSatz Nummer {i}.\n" for i in range(8)))
    assert main(["prune", "builtin:llama", "--out", str(tmp_path / "a"), "--calib", str(corpus), *FAST]) == 0
    assert main(["prune", "builtin:bloom", "--out", str(tmp_path / "b"), "--recipe", "paper", "--quiet",
                 "--method", "contrastive", "--protect", "topk:5%", "--owl", "5,0.08"]) == 0
    config = json.loads((tmp_path / "b" / "tfprune.json").read_text())["config"]
    assert config["nsamples"] == 100 and config["seqlen"] == 512 and len(config["langs"]) == 14


@pytest.mark.parametrize("options,message", [
    (dict(sparsity=1.0), "sparsity must be in \\[0, 1\\)"),
    (dict(sparsity=-0.1), "sparsity must be in \\[0, 1\\)"),
    (dict(pattern="4:4"), "0 < N < M"),
    (dict(pattern="2-4"), "N:M"),
    (dict(pattern="2:4", sparsity=0.7), "fixes sparsity at 0.5"),
    (dict(method="obs-magic"), "unknown method"),
    (dict(protect="top:3"), "protect must be"),
    (dict(owl=(5, 0.08), pattern="2:4"), "unstructured"),
    (dict(nsamples=0), "nsamples must be a positive integer"),
])
def test_bad_config(options, message):
    with pytest.raises(ConfigError, match=message):
        PruneConfig(**options)


def test_cli_reports_errors_before_writing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prune", "builtin:llama", "--out", str(out), "--sparsity", "1.5", *FAST]) == 2
    assert "sparsity must be in [0, 1)" in capsys.readouterr().err
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert main(["prune", "builtin:llama", "--out", str(out), *FAST]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"
    assert main(["prune", "builtin:llama", "--out", str(tmp_path / "x"), "--calib", str(tmp_path / "no.tsv"),
                 *FAST]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_in_features_not_divisible_by_m(tiny_model):
    model, tokenizer = tiny_model("llama")
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ConfigError, match="in_features=64, not a multiple of M=5"):
        tfprune.prune(model, tokenizer, PruneConfig(pattern="2:5", nsamples=2, seqlen=16), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_encoder_decoder_models_are_refused(tmp_path):
    from transformers import T5Config, T5ForConditionalGeneration

    model = T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                                num_heads=4))
    with pytest.raises(UnsupportedArchitectureError, match="encoder-decoder"):
        tfprune.prune(model, None, PruneConfig(), calib=torch.randint(0, 64, (2, 8)), progress=False)
    model.save_pretrained(tmp_path / "t5")
    assert main(["prune", str(tmp_path / "t5"), "--out", str(tmp_path / "o"), *FAST]) == 2
    assert not (tmp_path / "o").exists()


def test_empty_calibration(tiny_model):
    model, tokenizer = tiny_model("llama")
    with pytest.raises(CalibrationError, match="empty"):
        tfprune.prune(model, tokenizer, PruneConfig(), calib=[], progress=False)
    with pytest.raises(CalibrationError, match="empty"):
        tfprune.prune(model, tokenizer, PruneConfig(), calib=torch.zeros(0, 5, dtype=torch.int64), progress=False)


def test_nan_weights_and_overflowing_activations(tiny_model):
    model, tokenizer = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight[5] = float("nan")
    with pytest.raises(NonFiniteWeightError, match="model.layers.0.input_layernorm.weight holds 1 NaN"):
        tfprune.prune(model, tokenizer, PruneConfig(nsamples=2, seqlen=16), progress=False)
    model, tokenizer = tiny_model("llama")
    with torch.no_grad():  # finite weights whose activations overflow fp32 in Σx²
        model.model.layers[0].input_layernorm.weight[5] = 3e38
    with pytest.raises(NonFiniteActivationError, match="0.self_attn.q_proj"):
        tfprune.prune(model, tokenizer, PruneConfig(nsamples=2, seqlen=16), progress=False)


def test_atomic_output_dir_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    out.mkdir()
    (out / "a").write_text("a")
    for overwrite in (False, True):  # not a tfprune output: refused either way
        with pytest.raises(OutputExistsError):
            with atomic_output_dir(out, overwrite=overwrite):
                pass
    (out / "tfprune.json").write_text("{}")  # a previous tfprune output: replaced with overwrite
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "b").write_text("b")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_report_table_and_dict():
    report = PruneReport()
    assert "0 layers" in report.table() and report.to_dict()["sparsity"] == 0.0


def test_inspect_reads_compressed_tensors_checkpoints(tmp_path, capsys):
    out = tmp_path / "ct"
    assert main(["prune", "builtin:llama", "--out", str(out), "--pattern", "2:4", "--format", "compressed-tensors",
                 *FAST, *FEW_STEPS]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "model.layers.1.mlp.down_proj " in text and "14 of 16 weight matrices" in text
