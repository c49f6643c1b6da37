"""`tfprune analyze`: per-site channel magnitudes (L2 over real tokens, averaged over prompts), the planted
large-magnitude channels found, top-k% overlaps, and the PNG/JSON outputs."""
import json

import numpy as np
import pytest
import torch

from tfprune.analysis import analyze, channel_magnitudes, topk_overlap
from tfprune.builtin import PLANTED_CHANNELS
from tfprune.calib import tokenize_prompts
from tfprune.cli import main


pytestmark = pytest.mark.usefixtures("one_thread")


def test_analysis_finds_planted_channels(tiny_model):
    model, tokenizer = tiny_model("llama")
    result, magnitudes = analyze(model, tokenizer, langs=["de", "zh", "sw"], nsamples=6, shots=2, seqlen=96, topk=5)
    assert result["sites"] == ["0.input_layernorm", "0.post_attention_layernorm", "1.input_layernorm",
                               "1.post_attention_layernorm"]
    for pool in ("translation", "monolingual"):
        for row in result["top_channels"][pool]:
            assert {channel for channel, _ in row[:3]} == set(PLANTED_CHANNELS)
            assert row[2][1] > 3 * row[3][1]  # far above the rest
    assert magnitudes["translation"].shape == (4, 64)
    assert result["setting_order"] == ["de-en", "zh-en", "sw-en", "de", "zh", "sw", "en"]
    overlap = np.asarray(result["overlap"])
    assert overlap.shape == (4, len(result["fractions"])) and ((0 <= overlap) & (overlap <= 1)).all()
    assert overlap[:, result["fractions"].index(0.05)] == pytest.approx(1.0)  # top-3 = the planted ones in both
    matrix = np.asarray(result["setting_overlap"]["1.input_layernorm"])
    assert matrix.shape == (7, 7) and np.allclose(np.diag(matrix), 1.0)


def test_magnitude_is_mean_over_prompts_of_l2_over_real_tokens(tiny_model):
    model, tokenizer = tiny_model("gpt2")
    prompts = ["German: Guten Morgen.</s>English: Good morning.</s>", "French: Merci.</s>"]
    calib = tokenize_prompts(tokenizer, prompts, 64)
    assert calib.attention_mask[1].sum() < calib.attention_mask.shape[1]  # the second prompt is padded
    names, batched = channel_magnitudes(model, calib, site="residual", batch_size=2)
    captured = []
    handle = model.transformer.h[1].register_forward_hook(lambda m, a, out: captured.append(
        (out[0] if isinstance(out, tuple) else out)[0].double()))
    with torch.no_grad():
        for text in prompts:  # one unpadded prompt at a time
            model(input_ids=torch.tensor([tokenizer(text)["input_ids"]]))
    handle.remove()
    expected = torch.stack([h.norm(dim=0) for h in captured]).mean(0)
    assert names == ["0", "1"]
    assert torch.allclose(batched[1], expected, rtol=1e-4, atol=1e-4)


def test_topk_overlap():
    a = torch.tensor([[5.0, 4, 3, 2, 1, 0, 0, 0, 0, 0]])
    b = torch.tensor([[5.0, 0, 3, 0, 1, 2, 0, 4, 0, 0]])
    assert topk_overlap(a, b, 0.1).tolist() == [1.0]        # {0} vs {0}
    assert topk_overlap(a, b, 0.3).tolist() == pytest.approx([2 / 3])  # {0,1,2} vs {0,7,2}
    assert topk_overlap(a, a, 0.5).tolist() == [1.0]


def test_cli_analyze_writes_json_and_heatmaps(tmp_path, capsys):
    out = tmp_path / "analysis"
    assert main(["analyze", "builtin:bloom", "--out", str(out), "--langs", "de,ru", "--nsamples", "4",
                 "--shots", "2", "--seqlen", "64", "--topk", "4"]) == 0
    result = json.loads((out / "analysis.json").read_text())
    assert result["model"] == "builtin:bloom" and result["site"] == "norm" and len(result["sites"]) == 4
    for row in result["top_channels"]["translation"]:
        assert {c for c, _ in row[:3]} == set(PLANTED_CHANNELS)
    for name in ("magnitude.png", "overlap.png", "settings_overlap.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(np.load(out / "magnitudes.npz")) >= {"translation", "monolingual", "de_en", "sites"}
    assert "3" in capsys.readouterr().out
    assert main(["analyze", "builtin:llama", "--out", str(tmp_path / "x"), "--langs", "en"]) == 2
