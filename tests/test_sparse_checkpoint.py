"""compressed-tensors sparse-24-bitmask checkpoints: written by save_pruned / `tfprune prune --format
compressed-tensors`, identical to what compressed-tensors' own compressor writes, and loaded by
tfprune.from_pretrained into SparseLinear modules with the dense model's logits."""
import json
import warnings

import pytest
import torch
from safetensors.torch import load_file

import tfprune
from tfprune import cli
from tfprune.errors import TfpruneError
from tfprune.io import save_pruned
from tfprune.sparse import SparseLinear

from sparse_testing import prune_24_

pytestmark = [pytest.mark.filterwarnings("ignore:SparseLinear. no 2.4 sparse kernel"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning:compressed_tensors")]


@pytest.fixture(autouse=True)
def _exact_path(monkeypatch):
    """Logits are compared for equality: SparseLinear takes its unpacked-weight path, not tfprune.decode24's
    few-row kernel (its own fp32 summation order; tests/test_sparse_linear.py checks it is close)."""
    monkeypatch.setenv("TFPRUNE_DECODE_MAX_ROWS", "0")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(dense pruned model, tokenizer, dense dir, compressed-tensors dir)."""
    from tfprune.builtin import build_model

    model, tokenizer = build_model("llama")
    prune_24_(model)
    root = tmp_path_factory.mktemp("ckpt")
    save_pruned(model, tokenizer, root / "dense")
    save_pruned(model, tokenizer, root / "ct", format="compressed-tensors")
    return model, tokenizer, root / "dense", root / "ct"


def logits(model, tokenizer, text="Der Hund läuft schnell über die Straße."):
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits


def test_config_and_tensors(saved):
    model, _, _, ct = saved
    quant = json.loads((ct / "config.json").read_text())["quantization_config"]
    assert quant["quant_method"] == "compressed-tensors"
    assert quant["sparsity_config"]["format"] == "sparse-24-bitmask"
    assert quant["sparsity_config"]["sparsity_structure"] == "2:4"
    assert quant["sparsity_config"]["ignore"] == ["lm_head"]
    tensors = load_file(ct / "model.safetensors")
    prefix = "model.layers.1.self_attn.k_proj"
    assert f"{prefix}.weight" not in tensors
    assert tensors[f"{prefix}.shape"].tolist() == [[32], [64]]
    assert tensors[f"{prefix}.compressed"].shape == (32, 32) and tensors[f"{prefix}.bitmask"].dtype == torch.uint8
    assert "lm_head.weight" in tensors


def test_same_bytes_as_compressed_tensors(saved, tmp_path):
    """compressed-tensors' ModelCompressor (what llm-compressor runs) writes the same tensors, and its
    checkpoint loads into tfprune."""
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.config import Sparse24BitMaskConfig

    model, tokenizer, _, ct = saved
    compressor = ModelCompressor(sparsity_config=Sparse24BitMaskConfig(targets=["Linear"], ignore=["lm_head"]))
    model.save_pretrained(tmp_path, state_dict=compressor.compress(model), safe_serialization=True)
    compressor.update_config(str(tmp_path))
    theirs, ours = load_file(tmp_path / "model.safetensors"), load_file(ct / "model.safetensors")
    assert sorted(theirs) == sorted(ours)
    for name in ours:
        assert ours[name].dtype == theirs[name].dtype and torch.equal(ours[name], theirs[name]), name
    loaded = tfprune.from_pretrained(tmp_path)
    assert torch.equal(logits(loaded, tokenizer), logits(model, tokenizer))


def test_compressed_tensors_decompresses_ours(saved):
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors import ModelCompressor

    from tfprune.builtin import build_model

    model, _, _, ct = saved
    fresh, _ = build_model("llama", seed=1)
    ModelCompressor.from_pretrained(str(ct)).decompress(str(ct), fresh)
    for (name, ours), theirs in zip(fresh.state_dict().items(), model.state_dict().values()):
        assert torch.equal(ours, theirs), name


def test_from_pretrained_same_logits(saved):
    model, tokenizer, dense, ct = saved
    sparse = tfprune.from_pretrained(ct)
    assert isinstance(sparse.model.layers[0].self_attn.q_proj, SparseLinear)
    assert not isinstance(sparse.lm_head, SparseLinear)
    assert not sparse.training
    assert torch.equal(logits(sparse, tokenizer), logits(model, tokenizer))
    plain = tfprune.from_pretrained(dense)
    assert not any(isinstance(m, SparseLinear) for m in plain.modules())
    assert torch.equal(logits(plain, tokenizer), logits(model, tokenizer))
    ids = tokenizer("Hola", return_tensors="pt").input_ids
    generated = sparse.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(generated, model.generate(ids, max_new_tokens=6, do_sample=False))


@pytest.mark.parametrize("format", ["cutlass", "bitmask"])
def test_from_pretrained_float16(saved, format):
    _, tokenizer, dense, ct = saved
    sparse = tfprune.from_pretrained(ct, dtype="float16", format=format)
    layer = sparse.model.layers[1].mlp.down_proj
    assert layer.format == format and layer.values.dtype == torch.float16
    reference = tfprune.from_pretrained(dense, dtype=torch.float16)
    assert torch.equal(logits(sparse, tokenizer), logits(reference, tokenizer))


def test_from_pretrained_errors(saved, tmp_path):
    _, _, _, ct = saved
    with pytest.raises(TfpruneError, match="no config.json"):
        tfprune.from_pretrained(tmp_path)
    config = json.loads((ct / "config.json").read_text())
    config["quantization_config"]["config_groups"] = {"group_0": {"targets": ["Linear"]}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(TfpruneError, match="quantized compressed-tensors checkpoint"):
        tfprune.from_pretrained(tmp_path)


def test_save_refuses_unpruned_model(tmp_path):
    from tfprune.builtin import build_model

    model, tokenizer = build_model("llama")
    with pytest.raises(TfpruneError, match="no 2:4-sparse nn.Linear"):
        save_pruned(model, tokenizer, tmp_path / "out", format="compressed-tensors")
    assert not (tmp_path / "out").exists()
    with pytest.raises(TfpruneError, match="format must be one of dense, compressed-tensors"):
        save_pruned(model, tokenizer, tmp_path / "out", format="csr")


def test_cli_prune_compressed_tensors(tmp_path, capsys):
    out = tmp_path / "ct"
    argv = ["prune", "builtin:llama", "--out", str(out), "--pattern", "2:4", "--format", "compressed-tensors",
            "--nsamples", "4", "--seqlen", "32", "--quiet", "--no-streaming", "--reconstruct", "4"]
    assert cli.main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["sparsity_config"]["format"] == "sparse-24-bitmask"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tfprune.from_pretrained(out)
    assert sum(isinstance(m, SparseLinear) for m in model.modules()) == 14
    assert cli.main(["prune", "builtin:llama", "--out", str(tmp_path / "x"), "--format", "compressed-tensors"]) == 2
    assert "needs --pattern 2:4" in capsys.readouterr().err
