"""`tfprune analyze`: per-site channel magnitudes (L2 over real tokens, averaged over prompts), the planted
large-magnitude channels found, top-k% overlaps, and the PNG/JSON outputs."""
import json

import numpy as np
import pytest
import torch

from tfprune.analysis import (OUTLIER_FACTORS, _heatmap_channels, _panel_layers, analyze, channel_magnitudes,
                              site_layer, summarize, topk_overlap)
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


def test_summary_flags_a_channel_that_grows_more_under_translation():
    rng = np.random.default_rng(0)
    mono = rng.uniform(1, 2, size=(2, 100))
    mono[:, 7] = 12.0  # a large channel in both settings (the median is about 1.5)
    tr = 1.5 * mono  # longer prompts: every channel ×1.5
    tr[1, 7] *= 4  # site 1: channel 7 grows 4× more than the rest
    first, second = summarize(["0.a", "1.a"], tr, mono, k=5)
    assert first["top_channel"] == second["top_channel"] == 7
    assert first["median_ratio"] == pytest.approx(1.5) and first["top_ratio_over_median_ratio"] == pytest.approx(1.0)
    assert second["top_ratio"] == pytest.approx(6.0) and second["top_ratio_over_median_ratio"] == pytest.approx(4.0)
    assert second["outliers"] == {"translation": {"5": 1, "10": 1, "20": 1}, "monolingual": {"5": 1, "10": 0, "20": 0}}
    assert first["overlap"]["1%"] == 1.0 and second["layer"] == 1


def test_site_layers_and_panels():
    assert site_layer("5.input_layernorm") == (5, "input_layernorm")
    assert site_layer("12") == (12, "block output")
    sites = [f"{i}.{kind}" for i in range(18) for kind in ("input_layernorm", "pre_feedforward_layernorm")]
    assert _panel_layers({"sites": sites, "full_attention_layers": [5, 11, 17]}) == [0, 5, 9, 11, 17]
    assert _panel_layers({"sites": ["0", "1"], "full_attention_layers": []}) == [0, 1]


def _recomputed(tr: np.ndarray, mono: np.ndarray, k: int) -> dict:
    """One site's summary numbers recomputed in float64 from magnitudes.npz, independently of summarize."""
    top, mono_top = int(np.argmax(tr)), int(np.argmax(mono))
    med_tr, med_mono = np.median(tr), np.median(mono)

    def top_set(m, n):
        return set(np.argsort(-m, kind="stable")[:n].tolist())

    return {
        "top_channel": top, "translation_max": tr[top], "monolingual_at_top_channel": mono[top],
        "top_ratio": tr[top] / mono[top], "monolingual_top_channel": mono_top, "max_ratio": tr[top] / mono[mono_top],
        "translation_topk_mean": np.sort(tr)[-k:].mean(), "monolingual_topk_mean": np.sort(mono)[-k:].mean(),
        "median_ratio": med_tr / med_mono, "top_ratio_over_median_ratio": (tr[top] / mono[top]) / (med_tr / med_mono),
        "translation_max_over_median": tr[top] / med_tr, "monolingual_max_over_median": mono[mono_top] / med_mono,
        "outliers": {"translation": {f"{f:g}": int((tr > f * med_tr).sum()) for f in OUTLIER_FACTORS},
                     "monolingual": {f"{f:g}": int((mono > f * med_mono).sum()) for f in OUTLIER_FACTORS}},
        "topk_overlap": len(top_set(tr, k) & top_set(mono, k)) / k,
        "overlap": {f"{p}%": len(top_set(tr, n) & top_set(mono, n)) / n
                    for p, n in ((1, 1), (5, 3), (10, 6), (20, 13))},  # of 64 channels
    }


def test_cli_analyze_writes_json_and_heatmaps(tmp_path, capsys):
    out = tmp_path / "analysis"
    assert main(["analyze", "builtin:bloom", "--out", str(out), "--langs", "de,ru", "--nsamples", "4",
                 "--shots", "2", "--seqlen", "64", "--topk", "4"]) == 0
    result = json.loads((out / "analysis.json").read_text())
    assert result["model"] == "builtin:bloom" and result["site"] == "norm" and len(result["sites"]) == 4
    for row in result["top_channels"]["translation"]:
        assert {c for c, _ in row[:3]} == set(PLANTED_CHANNELS)
    for name in ("top_channels.png", "summary.png", "overlap.png", "magnitude.png", "settings_overlap.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    npz = np.load(out / "magnitudes.npz")
    assert set(npz) >= {"translation", "monolingual", "de_en", "sites"}
    tr, mono = npz["translation"], npz["monolingual"]
    assert tr.dtype == np.float64 and tr.shape == (4, 64)
    assert result["full_attention_layers"] == [] and result["outlier_factors"] == list(OUTLIER_FACTORS)
    tokens = result["tokens_per_prompt"]
    assert 0 < tokens["monolingual"] <= tokens["translation"] <= 64  # a demo is two sentences; seqlen 64
    assert [row["site"] for row in result["summary"]] == result["sites"]
    for s, (row, compared) in enumerate(zip(result["summary"], result["top_channels"]["translation_compared"])):
        assert len(compared) == 4 and {c for c, _, _ in compared[:3]} == set(PLANTED_CHANNELS)
        for channel, t, m in compared:
            assert (t, m) == pytest.approx((tr[s, channel], mono[s, channel]), rel=1e-12)
        assert row["top_channel"] in PLANTED_CHANNELS and row["monolingual_top_channel"] in PLANTED_CHANNELS
        assert row["translation_max_over_median"] > 10 and row["outliers"]["translation"]["10"] == 3
        assert row["layer"] == s // 2
        for key, expected in _recomputed(tr[s], mono[s], 4).items():
            assert row[key] == (pytest.approx(expected, rel=1e-9) if isinstance(expected, float) else expected), key
    assert set(PLANTED_CHANNELS) <= set(_heatmap_channels(result))
    assert "3" in capsys.readouterr().out
    assert main(["analyze", "builtin:llama", "--out", str(tmp_path / "x"), "--langs", "en"]) == 2
