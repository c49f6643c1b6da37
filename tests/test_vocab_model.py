"""Vocabulary trim, model side: logits on the kept ids unchanged (against the untrimmed model), tied stays tied,
configs remapped, checkpoints (dense, 2:4, compressed-tensors) trimmed tensor by tensor, the CLI, and
prune --trim-vocab in memory and streaming giving the same files."""
import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer
from vocab_testing import HELD_OUT, spm_tokenizer, tiny_gemma

import tfprune
from tfprune import PruneConfig
from tfprune.builtin import build_model
from tfprune.cli import main
from tfprune.errors import VocabError
from tfprune.vocab import VOCAB_FILE, TrimOptions, trim_checkpoint, trim_vocab
from tfprune.vocab.model import trim_model_

FAST = ["--nsamples", "4", "--seqlen", "32", "--batch-size", "2", "--quiet"]


def tensors_of(folder):
    index = json.loads((folder / "model.safetensors.index.json").read_text()) if (
        folder / "model.safetensors.index.json").is_file() else None
    files = sorted(set(index["weight_map"].values())) if index else [p.name for p in folder.glob("*.safetensors")]
    tensors = {}
    for file in files:
        tensors.update(load_file(folder / file))
    return tensors


def restricted_logprobs(logits: torch.Tensor, kept) -> torch.Tensor:
    """The original model's next-token log-probabilities renormalised over the kept ids [T, len(kept)]."""
    return torch.log_softmax(logits.float()[:, list(kept)], dim=-1)


def assert_same_function(original, trimmed, tokenizer, new_tokenizer, kept, texts, atol=1e-5):
    for text in texts:
        before, after = tokenizer(text).input_ids, new_tokenizer(text).input_ids
        assert [kept[i] for i in after] == before, text
        with torch.no_grad():
            reference = original(input_ids=torch.tensor([before])).logits[0]
            got = trimmed(input_ids=torch.tensor([after])).logits[0]
        torch.testing.assert_close(got, reference[:, list(kept)], atol=atol, rtol=0)
        torch.testing.assert_close(torch.log_softmax(got.float(), -1), restricted_logprobs(reference, kept),
                                   atol=atol, rtol=0)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bloom"])
def test_in_memory_trim_keeps_the_function_on_kept_ids(family):
    original, tokenizer = build_model(family)
    model, _ = build_model(family)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    new_tokenizer, plan = trim_vocab(model, tokenizer, "de,fr,es,ru")
    kept = plan.selection.kept
    assert model.get_input_embeddings().weight.shape == (len(kept), original.get_input_embeddings().weight.shape[1])
    assert model.get_output_embeddings().weight.shape[0] == len(kept) == model.config.vocab_size == len(new_tokenizer)
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    texts = [t for lang in ("de", "fr", "es", "ru") for t in HELD_OUT[lang]]
    assert_same_function(original, model, tokenizer, new_tokenizer, kept, texts)


def test_untied_head_with_bias_and_padding_idx():
    model, tokenizer = build_model("llama")
    head = model.get_output_embeddings()
    head.bias = nn.Parameter(torch.randn(head.out_features))
    model.get_input_embeddings().padding_idx = tokenizer.pad_token_id
    original_head = (head.weight.clone(), head.bias.clone())
    kept = (0, 1, 2, 3, 17, 200, 1023)
    model.generation_config.eos_token_id = [2, 200]
    trim_model_(model, kept)
    index = torch.tensor(kept)
    assert torch.equal(head.weight, original_head[0][index]) and torch.equal(head.bias, original_head[1][index])
    assert head.out_features == 7 and model.config.vocab_size == 7 and model.vocab_size == 7
    assert model.generation_config.eos_token_id == [2, 5]
    assert model.get_input_embeddings().padding_idx == 0
    assert model(input_ids=torch.tensor([[1, 6, 5]])).logits.shape == (1, 3, 7)


def test_gemma_like_model_in_memory_and_from_the_checkpoint(tmp_path):
    """A SentencePiece-style tokenizer with byte fallback and a tied Gemma 3 model: in-memory and checkpoint
    trims agree with each other and with the original; the checkpoint loads and generates."""
    tokenizer = spm_tokenizer()
    original = tiny_gemma(tokenizer)
    original.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    before = {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()}
    summary = trim_checkpoint(tmp_path / "model", tmp_path / "trimmed", TrimOptions("de,ru"), progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()} == before  # the input is only read
    kept = summary.selection.kept
    assert summary.trimmed_tensors == 1 and summary.bytes_after < summary.bytes_before
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "trimmed").eval()
    loaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "trimmed")
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight and loaded.config.vocab_size == len(kept)
    record = json.loads((tmp_path / "trimmed" / VOCAB_FILE).read_text())
    assert record["kept"] == list(kept) and record["counts"]["byte"] == 256 and record["verified"]["identical"] > 0
    texts = HELD_OUT["de"] + HELD_OUT["ru"]
    assert_same_function(original, loaded, tokenizer, loaded_tokenizer, kept, texts)

    model = tiny_gemma(tokenizer)
    memory_tokenizer, plan = trim_vocab(model, tokenizer, TrimOptions("de,ru"))
    assert plan.selection.kept == kept
    assert torch.equal(model.model.embed_tokens.weight, loaded.model.embed_tokens.weight)
    prompt = loaded_tokenizer("Der Hund", return_tensors="pt")
    generated = loaded.generate(**prompt, max_new_tokens=6, do_sample=False)
    reference = original.generate(**tokenizer("Der Hund", return_tensors="pt"), max_new_tokens=6, do_sample=False,
                                  suppress_tokens=[i for i in range(len(tokenizer)) if i not in set(kept)])
    assert [kept[i] for i in generated[0].tolist()] == reference[0].tolist()
    config = json.loads((tmp_path / "trimmed" / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (2, 1, 0)


def test_compressed_tensors_checkpoint_stays_packed_and_matches_in_memory(tmp_path):
    """prune 2:4 -> compressed-tensors -> trim-vocab equals prune 2:4 -> trim in memory -> compressed-tensors:
    same tensors (decoder still packed), same quantization_config; tfprune.from_pretrained loads it."""
    from tfprune.sparse import SparseLinear, from_pretrained

    config = PruneConfig(pattern="2:4", nsamples=4, seqlen=32, batch_size=2, reconstruct=4)
    model, tokenizer = build_model("llama")
    tfprune.prune(model, tokenizer, config, progress=False)
    tfprune.save_pruned(model, tokenizer, tmp_path / "ct", config, format="compressed-tensors")
    trim_checkpoint(tmp_path / "ct", tmp_path / "ct-trimmed", TrimOptions("de,ru"), progress=False)
    new_tokenizer, plan = trim_vocab(model, tokenizer, "de,ru")
    tfprune.save_pruned(model, new_tokenizer, tmp_path / "memory", config, format="compressed-tensors")
    trimmed, expected = tensors_of(tmp_path / "ct-trimmed"), tensors_of(tmp_path / "memory")
    assert set(trimmed) == set(expected) and any(name.endswith(".bitmask") for name in trimmed)
    for name, tensor in trimmed.items():
        assert tensor.dtype == expected[name].dtype and torch.equal(tensor, expected[name]), name
    original = tensors_of(tmp_path / "ct")
    assert all(torch.equal(original[n], trimmed[n]) for n in trimmed if "embed" not in n and "lm_head" not in n)
    configs = [json.loads((tmp_path / d / "config.json").read_text()) for d in ("ct-trimmed", "memory")]
    assert configs[0]["quantization_config"] == configs[1]["quantization_config"]
    assert configs[0]["vocab_size"] == len(plan.selection)
    reloaded = from_pretrained(tmp_path / "ct-trimmed", format="bitmask")
    assert any(isinstance(m, SparseLinear) for m in reloaded.modules())
    ids = torch.randint(0, len(plan.selection), (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_packed_lm_head_rows_are_sliced():
    from tfprune.sparse.formats import pack, unpack
    from tfprune.vocab.checkpoint import VocabTensors

    skeleton, _ = build_model("llama")
    weight = skeleton.lm_head.weight.detach().clone()
    groups = weight.reshape(weight.shape[0], -1, 4)
    weight = groups.masked_fill(groups.abs() < groups.abs().topk(2, -1).values[..., 1:], 0).reshape(weight.shape)
    packed = pack(weight, "bitmask")
    shapes = {name: tuple(p.shape) for name, p in skeleton.state_dict().items() if name != "lm_head.weight"}
    shapes.update({"lm_head.compressed": tuple(packed.values.shape), "lm_head.bitmask": tuple(packed.meta.shape),
                   "lm_head.shape": (2, 1)})
    kept = (0, 5, 6, 1000)
    tensors = VocabTensors(skeleton, shapes, kept)
    assert tensors.kinds == {"model.embed_tokens.weight": "rows", "lm_head.compressed": "rows",
                             "lm_head.bitmask": "rows", "lm_head.shape": "shape"}
    values = tensors.apply("lm_head.compressed", packed.values)
    meta = tensors.apply("lm_head.bitmask", packed.meta)
    shape = tensors.apply("lm_head.shape", torch.tensor(packed.shape).reshape(-1, 1))
    sliced = unpack(type(packed)("bitmask", tuple(shape.flatten().tolist()), values.dtype, values, meta))
    assert torch.equal(sliced, weight[list(kept)])


def test_cli_trim_vocab_and_bad_input(tmp_path, capsys):
    out = tmp_path / "gpt2-deru"
    assert main(["trim-vocab", "builtin:gpt2", "--langs", "de,ru", "--out", str(out), "--quiet"]) == 0
    line = capsys.readouterr().out
    assert "kept" in line and "script" in line and "safetensors" in line
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == len(tokenizer) == json.loads((out / VOCAB_FILE).read_text())["vocab_size"]
    assert model.generate(**tokenizer("Привет", return_tensors="pt"), max_new_tokens=3, do_sample=False).shape[1] > 3
    bad = [
        (["--langs", "de,xx"], "unknown language code 'xx'"),
        (["--langs", "ko"], "no token in the Hangul script"),
        (["--langs", "de", "--by", "corpus", "--corpus", str(tmp_path / "missing.tsv")], "does not exist"),
        (["--langs", "de", "--by", "corpus", "--corpus", "builtin", "--min-count", "0"], "--min-count"),
    ]
    for options, message in bad:
        target = tmp_path / "never"
        assert main(["trim-vocab", "builtin:gpt2", "--out", str(target), "--quiet", *options]) == 2
        assert message in capsys.readouterr().err
        assert not target.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["trim-vocab", str(out), "--langs", "de", "--out", str(out), "--overwrite", "--quiet"]) == 2
    assert "is the input" in capsys.readouterr().err
    assert main(["trim-vocab", str(out), "--langs", "de", "--out", str(out / "sub"), "--quiet"]) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main(["trim-vocab", str(out), "--langs", "de", "--out", str(tmp_path / "de"), "--quiet"]) == 0
    record = json.loads((tmp_path / "de" / VOCAB_FILE).read_text())
    assert record["previous"]["langs"] == ["de", "ru"] and record["original_vocab_size"] == len(tokenizer)


def test_unknown_embedding_layout_is_refused():
    model, tokenizer = build_model("llama")
    model.set_input_embeddings(nn.Sequential(model.get_input_embeddings()))
    with pytest.raises(VocabError, match="the input embeddings are a Sequential"):
        trim_model_(model, (0, 1, 2))


@pytest.mark.parametrize("output_format", ["dense", "compressed-tensors"])
def test_prune_with_trim_vocab_streaming_equals_in_memory(tmp_path, output_format):
    checkpoint = tmp_path / "ckpt"
    model, tokenizer = build_model("llama")
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    common = [str(checkpoint), "--pattern", "2:4", "--reconstruct", "4", "--distill", "0", "--trim-vocab", "de,fr",
              "--format", output_format, *FAST]
    assert main(["prune", *common, "--out", str(tmp_path / "memory"), "--no-streaming"]) == 0
    assert main(["prune", *common, "--out", str(tmp_path / "streamed"), "--streaming", "--shard-size", "90KB"]) == 0
    memory, streamed = tensors_of(tmp_path / "memory"), tensors_of(tmp_path / "streamed")
    assert set(memory) == set(streamed)
    for name, tensor in streamed.items():
        assert torch.equal(tensor, memory[name]), name
    records = [json.loads((tmp_path / d / VOCAB_FILE).read_text()) for d in ("memory", "streamed")]
    assert records[0]["kept"] == records[1]["kept"] and records[0]["vocab_size"] < len(tokenizer)
    configs = [json.loads((tmp_path / d / "config.json").read_text()) for d in ("memory", "streamed")]
    assert configs[0]["vocab_size"] == configs[1]["vocab_size"] == records[0]["vocab_size"]
    assert configs[0].get("quantization_config") == configs[1].get("quantization_config")
    tokenizers = [AutoTokenizer.from_pretrained(tmp_path / d) for d in ("memory", "streamed")]
    text = HELD_OUT["fr"][1]
    assert tokenizers[0](text).input_ids == tokenizers[1](text).input_ids
    assert [records[0]["kept"][i] for i in tokenizers[0](text).input_ids] == tokenizer(text).input_ids


def test_prune_trim_vocab_checks_languages_before_pruning(tmp_path, capsys):
    assert main(["prune", "builtin:llama", "--out", str(tmp_path / "x"), "--trim-vocab", "de,xx", *FAST]) == 2
    assert "unknown language code 'xx'" in capsys.readouterr().err
    assert main(["prune", "builtin:llama", "--out", str(tmp_path / "x"), "--trim-vocab", "ko", *FAST]) == 2
    assert "Hangul" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
