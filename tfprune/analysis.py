"""`tfprune analyze`: the paper's analysis of large-magnitude features.

A channel's magnitude at a site (layer) is the L2 norm of that hidden-state channel over the real tokens of
one prompt, averaged over the prompts of a setting (DESIGN §1). Settings: few-shot X→English translation
prompts and monolingual prompts, per language and pooled. Outputs: per site a summary (the top channel, max /
top-k mean / median per setting, their translation/monolingual ratios, channels above k × the median, overlaps),
the top-k channels per site and setting, the overlap of the top-k% sets of translation vs monolingual per site
(and between every pair of per-language settings), a JSON file, the magnitudes (.npz) and five PNGs: the top
channels of representative layers, the per-layer summary, the overlaps, a heatmap of the largest channels and
the per-language overlap matrices.

Sites: 'norm' (default): the normalized hidden states the attention and MLP linears read, which the pruning
score |W|·‖X‖ sees: the outputs of each block's norms that a linear reads (found in one forward pass; Gemma's
post-norms are not among them); 'residual': each block's output (the residual stream, what
`output_hidden_states` gives and the authors' script measures).
"""
from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .calib import builtin_corpus, tokenize_prompts, translation_prompts
from .calib.corpus import ParallelCorpus, language_name
from .calib.prompts import MONO_TEMPLATE
from .engine.discovery import block_norms, decoder_layers, find_linears
from .errors import TfpruneError

__all__ = ["SITES", "FRACTIONS", "OUTLIER_FACTORS", "channel_magnitudes", "topk_overlap", "site_layer", "summarize",
           "analyze", "plot_analysis", "write_analysis"]

log = logging.getLogger("tfprune")

SITES = ("norm", "residual")
FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
SUMMARY_FRACTIONS = (0.01, 0.05, 0.1, 0.2)  # the top-k% overlaps listed in each site's summary
OUTLIER_FACTORS = (5, 10, 20)  # summary: channels whose magnitude exceeds factor × the site's median channel


@torch.no_grad()
def _norm_sites(model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """Per block, the normalization layers whose output some linear reads (input norms of attention and MLP;
    not Gemma's post-norms), found by tensor identity in one forward pass. Every norm output is kept alive
    until the pass ends: a freed one's id could be reused by a later tensor that a linear reads."""
    blocks = decoder_layers(model)
    outputs: dict[int, tuple[tuple[int, str], torch.Tensor]] = {}  # id(norm output) -> ((block, name), output)
    read: set[tuple[int, str]] = set()

    def reads(x: torch.Tensor) -> None:
        entry = outputs.get(id(x))
        if entry is not None and entry[1] is x:
            read.add(entry[0])

    handles = []
    for index, block in enumerate(blocks):
        for name, norm in block_norms(block, model.config.hidden_size).items():
            handles.append(norm.register_forward_hook(
                lambda _m, _a, output, key=(index, name): outputs.__setitem__(id(output), (key, output))))
        for linear in find_linears(block).values():
            handles.append(linear.register_forward_pre_hook(lambda _m, args: reads(args[0])))
    try:
        model(input_ids=input_ids, attention_mask=mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    if not read:
        raise TfpruneError(f"{type(model).__name__}: no normalization layer feeds a linear directly; use "
                           "--site residual")
    return [(f"{index}.{name}", blocks[index].get_submodule(name))
            for index, block in enumerate(blocks) for name in block_norms(block, model.config.hidden_size)
            if (index, name) in read]


def _site_modules(model: nn.Module, site: str, calib) -> list[tuple[str, nn.Module]]:
    """[(site name, module whose output is measured)] of `site`; 'norm' sites are found on calib's first prompt."""
    if site == "norm":
        device = next(model.parameters()).device
        ids, mask = next(calib.batches(1))
        return _norm_sites(model, ids.to(device), mask.to(device))
    if site == "residual":
        return [(str(i), block) for i, block in enumerate(decoder_layers(model))]
    raise TfpruneError(f"unknown site {site!r}: choose one of {', '.join(SITES)}")


class _LastBlockDone(Exception):
    """Raised after the last decoder block: every site has been measured, the final norm and LM head
    (a 262k-vocabulary head is most of Gemma 3 270M's forward pass) need not run."""


def _stop(_module, _args, _output):
    raise _LastBlockDone


@torch.no_grad()
def _magnitude_sums(model: nn.Module, modules: list[tuple[str, nn.Module]], calib,
                    batch_size: int) -> tuple[torch.Tensor, int]:
    """(Σ over prompts of per-prompt ‖x_j‖₂ at each site's module output [S, H] fp64, number of prompts)."""
    device = next(model.parameters()).device
    sums: list[torch.Tensor | None] = [None] * len(modules)
    current = {}

    def add(index, x):
        mask = current["mask"]  # [B, T]
        x = x.reshape(mask.shape[0], mask.shape[1], -1).float()  # [B, T, H]
        per_prompt = x.square().mul(mask[..., None]).sum(1).sqrt()  # [B, H]
        total = per_prompt.sum(0).double().cpu()
        sums[index] = total if sums[index] is None else sums[index] + total

    def hook(index):
        return lambda _module, _args, output: add(index, output[0] if isinstance(output, (tuple, list)) else output)

    handles = [module.register_forward_hook(hook(i)) for i, (_name, module) in enumerate(modules)]
    handles.append(decoder_layers(model)[-1].register_forward_hook(_stop))  # after the sites' hooks
    prompts = 0
    try:
        for input_ids, mask in calib.batches(batch_size):
            current["mask"] = mask.to(device, torch.float32)
            try:
                model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False)
            except _LastBlockDone:
                pass
            prompts += input_ids.shape[0]
    finally:
        for handle in handles:
            handle.remove()
    if any(s is None for s in sums):
        raise TfpruneError("a site received no activations: the model skipped some of its blocks")
    return torch.stack(sums), prompts


def channel_magnitudes(model: nn.Module, calib, site: str = "norm", batch_size: int = 8):
    """(site names, magnitudes [S, H] fp64): per site, the L2 norm of each channel over the real tokens of a
    prompt, averaged over the prompts of `calib` (a CalibrationSet; padding never counts)."""
    modules = _site_modules(model, site, calib)
    sums, prompts = _magnitude_sums(model, modules, calib, batch_size)
    return [name for name, _ in modules], sums / prompts


def _top_sets(magnitudes: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest channels per site: [S, k] (ties to the lower index)."""
    return torch.sort(magnitudes, dim=1, descending=True, stable=True).indices[:, :k]


def topk_overlap(a: torch.Tensor, b: torch.Tensor, fraction: float) -> torch.Tensor:
    """|top-k%(a) ∩ top-k%(b)| / k per site, k = max(1, round(fraction · H)); a, b: [S, H] → [S]."""
    if a.shape != b.shape:
        raise ValueError(f"topk_overlap: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    k = max(1, round(fraction * a.shape[1]))
    top_a, top_b = _top_sets(a, k), _top_sets(b, k)
    hits = torch.zeros_like(a, dtype=torch.bool).scatter_(1, top_a, True).gather(1, top_b)
    return hits.double().mean(1)


def _mono_prompts(corpus: ParallelCorpus, lang: str, shots: int, n: int, eos: str, seed: int) -> list[str]:
    rng = random.Random(f"mono:{lang}:{seed}")
    return ["".join(MONO_TEMPLATE.format(name=language_name(lang), text=corpus.sentences[lang][j], eos=eos)
                    for j in rng.sample(range(len(corpus)), shots)) for _ in range(n)]


def _settings(tokenizer, corpus: ParallelCorpus, langs, nsamples: int, shots: int, seed: int) -> dict[str, list[str]]:
    """{setting: prompts}: '{x}-en' translation prompts and '{x}' monolingual prompts per language, and 'en'."""
    langs = [lang for lang in langs if lang != "en"]
    if not langs:
        raise TfpruneError("analyze needs at least one language besides English")
    if len(corpus) < shots:
        raise TfpruneError(f"the corpus has {len(corpus)} sentences per language, fewer than shots={shots}")
    per_lang = max(1, math.ceil(nsamples / len(langs)))
    eos = tokenizer.eos_token or ""
    settings = {}
    for lang in langs:
        settings[f"{lang}-en"] = translation_prompts(corpus, [lang], shots, per_lang, "x2en", eos, seed)
    for lang in langs + ["en"]:
        settings[lang] = _mono_prompts(corpus, lang, shots, per_lang, eos, seed)
    return settings


def site_layer(name: str) -> tuple[int, str]:
    """(decoder layer, site kind) of a site name: '5.input_layernorm' → (5, 'input_layernorm'), '5' → (5, 'block
    output')."""
    layer, _, kind = name.partition(".")
    return int(layer), kind or "block output"


def _ratio(a: float, b: float) -> float | None:
    """a / b, or None (JSON null) where b is 0."""
    return float(a / b) if b > 0 else None


def _site_summary(tr: np.ndarray, mono: np.ndarray, k: int) -> dict:
    """What the paper's question needs at one site, from its translation and monolingual magnitudes [H] fp64:
    the top channel under translation, both settings' max, top-k mean and median, their ratios, the channels
    above OUTLIER_FACTORS × the median, and the top-k / top-k% overlaps of the two settings."""
    order_tr, order_mono = np.argsort(-tr, kind="stable"), np.argsort(-mono, kind="stable")
    top = int(order_tr[0])
    med_tr, med_mono = float(np.median(tr)), float(np.median(mono))
    mean_tr, mean_mono = float(tr[order_tr[:k]].mean()), float(mono[order_mono[:k]].mean())
    median_ratio = _ratio(med_tr, med_mono)
    top_ratio = _ratio(tr[top], mono[top])
    hidden = tr.shape[0]
    overlaps = {}
    for fraction in SUMMARY_FRACTIONS:
        n = max(1, round(fraction * hidden))
        overlaps[f"{100 * fraction:g}%"] = len(set(order_tr[:n]) & set(order_mono[:n])) / n
    return {
        "top_channel": top, "translation_max": float(tr[top]), "monolingual_at_top_channel": float(mono[top]),
        "top_ratio": top_ratio,
        "monolingual_top_channel": int(order_mono[0]), "monolingual_max": float(mono[order_mono[0]]),
        "max_ratio": _ratio(tr[top], mono[order_mono[0]]),
        "translation_topk_mean": mean_tr, "monolingual_topk_mean": mean_mono,
        "topk_mean_ratio": _ratio(mean_tr, mean_mono),
        "translation_median": med_tr, "monolingual_median": med_mono, "median_ratio": median_ratio,
        "top_ratio_over_median_ratio": None if None in (top_ratio, median_ratio) else top_ratio / median_ratio,
        "translation_max_over_median": _ratio(tr[top], med_tr),
        "monolingual_max_over_median": _ratio(mono[order_mono[0]], med_mono),
        "outliers": {pool: {f"{factor:g}": int((m > factor * med).sum()) for factor in OUTLIER_FACTORS}
                     for pool, m, med in (("translation", tr, med_tr), ("monolingual", mono, med_mono))},
        "topk_overlap": len(set(order_tr[:k]) & set(order_mono[:k])) / k,
        "overlap": overlaps,
    }


def summarize(names: list[str], tr: np.ndarray, mono: np.ndarray, k: int) -> list[dict]:
    """Per site (tr, mono: [S, H] fp64), {'site', 'layer', **_site_summary}: the per-layer answer to "do a few
    channels stand out more under translation prompts?". top_ratio = translation / monolingual magnitude of the
    translation's top channel; median_ratio the same for the median channel (translation prompts are longer, so
    every channel's L2 norm over tokens grows, by about √(token ratio)); their quotient > 1 means the top channel
    grows more than the bulk."""
    return [{"site": name, "layer": site_layer(name)[0], **_site_summary(tr[s], mono[s], k)}
            for s, name in enumerate(names)]


def _top_compared(tr: np.ndarray, mono: np.ndarray, k: int) -> list[list[list]]:
    """Per site, the k largest channels under translation as [channel, translation, monolingual magnitude]."""
    order = np.argsort(-tr, axis=1, kind="stable")[:, :k]
    return [[[int(c), float(tr[s, c]), float(mono[s, c])] for c in row] for s, row in enumerate(order)]


def _full_attention_layers(model: nn.Module) -> list[int]:
    """Layers with global attention where the config has layer_types (Gemma 3: every 6th), else []."""
    types = getattr(model.config, "layer_types", None) or []
    return [i for i, kind in enumerate(types) if kind == "full_attention"]


@torch.no_grad()
def analyze(model: nn.Module, tokenizer, corpus: ParallelCorpus | None = None, langs=None, nsamples: int = 64,
            shots: int = 4, seqlen: int = 512, site: str = "norm", topk: int = 20, ratio: float = 0.3,
            fractions=FRACTIONS, batch_size: int = 8, seed: int = 0) -> tuple[dict, dict[str, np.ndarray]]:
    """Translation vs monolingual large-magnitude features of `model`.

    Returns (result, magnitudes): result is JSON-ready (sites; per site the summary of `summarize`; top-k
    channels per site of the pooled 'translation' and 'monolingual' settings, of their ratio, and translation's
    top-k with both magnitudes; the top-k% overlap per site and fraction; the per-language settings' overlap
    matrices at `ratio`; prompts and mean real tokens per prompt of every setting); magnitudes maps every
    setting to [S, H] fp64.
    """
    if topk < 1 or not 0 < ratio <= 1 or nsamples < 1:
        raise TfpruneError("analyze: topk and nsamples must be positive and ratio in (0, 1]")
    corpus = builtin_corpus() if corpus is None else corpus
    langs = list(langs) if langs else [lang for lang in corpus.languages if lang != "en"]
    corpus = corpus.select(sorted(set(langs) | {"en"}))
    model.eval()
    settings = _settings(tokenizer, corpus, langs, nsamples, shots, seed)
    calibs = {setting: tokenize_prompts(tokenizer, prompts, seqlen) for setting, prompts in settings.items()}
    modules = _site_modules(model, site, next(iter(calibs.values())))  # the same sites for every setting
    names, sums, counts = [name for name, _ in modules], {}, {}
    for setting, calib in calibs.items():
        sums[setting], counts[setting] = _magnitude_sums(model, modules, calib, batch_size)
        log.info("analyze: %s, %d prompts", setting, counts[setting])
    pools = {"translation": [s for s in settings if s.endswith("-en")],
             "monolingual": [s for s in settings if not s.endswith("-en")]}
    magnitudes = {pool: sum(sums[s] for s in members) / sum(counts[s] for s in members)
                  for pool, members in pools.items()}
    magnitudes.update({s: sums[s] / counts[s] for s in settings})
    tr, mono = magnitudes["translation"], magnitudes["monolingual"]
    k = min(topk, tr.shape[1])

    def top(m):
        values, index = torch.sort(m, dim=1, descending=True, stable=True)
        return [[[int(c), float(v)] for c, v in zip(index[s, :k], values[s, :k])] for s in range(m.shape[0])]

    overlap = torch.stack([topk_overlap(tr, mono, f) for f in fractions], dim=1)  # [S, F]
    order = list(settings)
    kr = max(1, round(ratio * tr.shape[1]))
    member = torch.stack([torch.zeros_like(tr, dtype=torch.bool).scatter_(1, _top_sets(magnitudes[s], kr), True)
                          for s in order]).double()  # [N, S, H]
    shared = torch.einsum("ash,bsh->sab", member, member) / kr  # [S, N, N]
    matrices = {name: shared[index].tolist() for index, name in enumerate(names)}
    tokens = {pool: sum(calibs[s].tokens for s in members) / sum(counts[s] for s in members)
              for pool, members in pools.items()}
    result = {
        "site": site, "sites": names, "hidden": int(tr.shape[1]), "topk": k, "ratio": ratio,
        "fractions": list(fractions), "nsamples": nsamples, "shots": shots, "seqlen": seqlen, "seed": seed,
        "langs": [lang for lang in langs if lang != "en"],
        "full_attention_layers": _full_attention_layers(model),
        "settings": {s: {"prompts": counts[s], "pool": "translation" if s.endswith("-en") else "monolingual",
                         "tokens_per_prompt": calibs[s].tokens / counts[s]} for s in order},
        "tokens_per_prompt": tokens,
        "outlier_factors": list(OUTLIER_FACTORS),
        "summary": summarize(names, tr.numpy(), mono.numpy(), k),
        "top_channels": {"translation": top(tr), "monolingual": top(mono),
                         "translation_over_monolingual": top(tr / mono.clamp_min(1e-12)),
                         "translation_compared": _top_compared(tr.numpy(), mono.numpy(), k)},
        "overlap": overlap.tolist(),
        "setting_order": order,
        "setting_overlap": matrices,
    }
    return result, {key: value.numpy() for key, value in magnitudes.items()}


TRANSLATION, MONOLINGUAL = "tab:blue", "tab:orange"


def _kinds(sites: list[str]) -> list[str]:
    """The site kinds in order of first appearance (one panel column each)."""
    return list(dict.fromkeys(site_layer(name)[1] for name in sites))


def _panel_layers(result: dict) -> list[int]:
    """Layers shown one panel each: the first, middle and last, and the full-attention layers."""
    layers = sorted({site_layer(name)[0] for name in result["sites"]})
    shown = {layers[0], layers[len(layers) // 2], layers[-1]}
    return sorted(shown | set(result["full_attention_layers"]) & set(layers))


def _fmt(value) -> str:
    """A ratio with two decimals, '–' for None (undefined)."""
    return "–" if value is None else f"{value:.2f}"


def _plain_log_y(ax) -> None:
    """Log-scale y ticks labelled as plain numbers: at 1, 2, 5 × 10^n where the axis spans up to 2.5 decades,
    else at the powers of 10; none on the minor ticks. Call after plotting."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    low, high = ax.get_ylim()
    axis = ax.yaxis
    axis.set_major_locator(LogLocator(subs=(1, 2, 5) if math.log10(high / low) <= 2.5 else (1,)))
    axis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _save(plt, fig, path: Path) -> Path:
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _top_panel(ax, result: dict, s: int) -> None:
    """One site: its top-k channels under translation, translation and monolingual bars side by side (log),
    dashed lines at each setting's median channel."""
    channels, tr, mono = zip(*result["top_channels"]["translation_compared"][s])
    info = result["summary"][s]
    x = np.arange(len(channels))
    ax.bar(x - 0.2, tr, 0.4, color=TRANSLATION, label="translation")
    ax.bar(x + 0.2, mono, 0.4, color=MONOLINGUAL, label="monolingual")
    ax.axhline(info["translation_median"], color=TRANSLATION, ls="--", lw=0.8, label="median channel")
    ax.axhline(info["monolingual_median"], color=MONOLINGUAL, ls="--", lw=0.8)
    ax.set_yscale("log")
    _plain_log_y(ax)
    ax.set_xticks(x, [str(c) for c in channels], rotation=90, fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    layer, kind = site_layer(info["site"])
    attention = " (full attn)" if layer in result["full_attention_layers"] else ""
    ax.set_title(f"layer {layer}{attention} {kind}\ntop ch {info['top_channel']}: translation/mono "
                 f"×{_fmt(info['top_ratio'])}, median ch ×{_fmt(info['median_ratio'])}", fontsize=8)


def _plot_top_channels(plt, result: dict, path: Path) -> Path:
    """A row per shown layer (_panel_layers), a column per site kind: _top_panel."""
    layers, kinds = _panel_layers(result), _kinds(result["sites"])
    index = {site_layer(name): s for s, name in enumerate(result["sites"])}
    fig, axes = plt.subplots(len(layers), len(kinds), figsize=(5.4 * len(kinds) + 0.4, 2.5 * len(layers) + 0.5),
                             squeeze=False)
    for row, layer in enumerate(layers):
        for col, kind in enumerate(kinds):
            if (layer, kind) in index:
                _top_panel(axes[row][col], result, index[(layer, kind)])
            else:
                axes[row][col].set_visible(False)
    axes[0][0].legend(fontsize=7, loc="upper right")
    fig.supxlabel(f"top-{result['topk']} channels by translation magnitude (channel id)", fontsize=9)
    fig.supylabel("mean over prompts of ‖x_j‖₂ over the prompt's tokens (log)", fontsize=9)
    fig.tight_layout()
    return _save(plt, fig, path)


def _series(result: dict, kind: str, key: str) -> tuple[list[int], list[float]]:
    """(layers, summary[key]) over the sites of one kind; None (an undefined ratio) becomes NaN."""
    rows = [(site_layer(r["site"])[0], r[key]) for r in result["summary"] if site_layer(r["site"])[1] == kind]
    return [layer for layer, _ in rows], [np.nan if v is None else v for _, v in rows]


def _summary_magnitudes(ax, result: dict, kind: str) -> None:
    """Max, top-k mean and median channel per setting over the layers; the translation's top channel id over
    its max, the monolingual one's under its max where it differs."""
    for pool, colour in (("translation", TRANSLATION), ("monolingual", MONOLINGUAL)):
        for key, style, label in (("max", "-o", "max"), ("topk_mean", "--", f"top-{result['topk']} mean"),
                                  ("median", ":", "median")):
            ax.plot(*_series(result, kind, f"{pool}_{key}"), style, color=colour, ms=3, label=f"{pool} {label}")
    layers, tops = _series(result, kind, "top_channel")
    _, mono_tops = _series(result, kind, "monolingual_top_channel")
    _, tr_max = _series(result, kind, "translation_max")
    _, mono_max = _series(result, kind, "monolingual_max")
    for layer, top, mono_top, high, low in zip(layers, tops, mono_tops, tr_max, mono_max):
        ax.annotate(str(top), (layer, high), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=6,
                    color=TRANSLATION)
        if mono_top != top:
            ax.annotate(str(mono_top), (layer, low), textcoords="offset points", xytext=(0, -9), ha="center",
                        fontsize=6, color=MONOLINGUAL)
    ax.set_yscale("log")
    ax.margins(x=0.04, y=0.12)  # room for the channel ids
    _plain_log_y(ax)


def _plot_summary(plt, result: dict, path: Path) -> Path:
    """A column per site kind, x = layer (full-attention layers shaded): (1) _summary_magnitudes; (2) max /
    median per setting (how far the top channel stands out, independent of prompt length); (3) translation /
    monolingual of the top channel, of the top-k means and of the median channel."""
    kinds, k = _kinds(result["sites"]), result["topk"]
    fig, axes = plt.subplots(3, len(kinds), figsize=(5.4 * len(kinds) + 0.4, 8.6), squeeze=False, sharex=True)
    for col, kind in enumerate(kinds):
        mag, stand, ratio = axes[0][col], axes[1][col], axes[2][col]
        for ax in (mag, stand, ratio):
            for layer in result["full_attention_layers"]:
                ax.axvspan(layer - 0.5, layer + 0.5, color="0.9", zorder=0)
        _summary_magnitudes(mag, result, kind)
        for pool, colour in (("translation", TRANSLATION), ("monolingual", MONOLINGUAL)):
            stand.plot(*_series(result, kind, f"{pool}_max_over_median"), "-o", color=colour, ms=3, label=pool)
        for key, style, label in (("top_ratio", "-o", "top channel (translation's)"),
                                  ("topk_mean_ratio", "--", f"top-{k} mean"), ("median_ratio", ":", "median channel")):
            layers, values = _series(result, kind, key)
            ratio.plot(layers, values, style, color="k", ms=3, label=label)
        ratio.axhline(1, color="0.5", lw=0.8)
        stand.set_yscale("log")
        _plain_log_y(stand)
        mag.set_title(kind, fontsize=9)
        ratio.set_xlabel("layer (shaded: full attention)" if result["full_attention_layers"] else "layer")
        ratio.set_xticks(sorted(set(layers)))
    axes[0][0].set_ylabel("mean ‖x_j‖₂ (log)")
    axes[1][0].set_ylabel("max / median channel (log)")
    axes[2][0].set_ylabel("translation / monolingual")
    axes[1][0].legend(fontsize=7)
    axes[2][0].legend(fontsize=7)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=3, fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return _save(plt, fig, path)


def _plot_overlap(plt, result: dict, path: Path) -> Path:
    """A panel per site kind: overlap (%) of the top-k% channel sets of translation and monolingual, layers ×
    k, numbers in the cells; random sets would overlap k%."""
    kinds = _kinds(result["sites"])
    fractions = [100 * f for f in result["fractions"]]
    overlap = 100 * np.asarray(result["overlap"])  # [S, F]
    layers = sorted({site_layer(name)[0] for name in result["sites"]})
    fig, axes = plt.subplots(len(kinds), 1, figsize=(1.8 + 0.42 * len(layers), 0.6 + 2.9 * len(kinds)),
                             squeeze=False)
    for ax, kind in zip(axes[:, 0], kinds):
        grid = np.full((len(fractions), len(layers)), np.nan)
        for s, name in enumerate(result["sites"]):
            layer, site_kind = site_layer(name)
            if site_kind == kind:
                grid[:, layers.index(layer)] = overlap[s]
        image = ax.imshow(grid, aspect="auto", vmin=0, vmax=100, cmap="viridis")
        for (row, col), value in np.ndenumerate(grid):
            if not np.isnan(value):
                ax.text(col, row, f"{value:.0f}", ha="center", va="center", fontsize=7,
                        color="k" if value > 60 else "w")
        ax.set_xticks(range(len(layers)), [f"{layer}*" if layer in result["full_attention_layers"] else str(layer)
                                           for layer in layers], fontsize=7)
        ax.set_yticks(range(len(fractions)), [f"{f:g}% (random {f:g})" for f in fractions], fontsize=7)
        ax.set_title(f"{kind}: overlap of top-k% channels, translation vs monolingual (%)", fontsize=9)
        fig.colorbar(image, ax=ax, pad=0.01)
    axes[-1][0].set_xlabel("layer (* full attention)")
    fig.tight_layout()
    return _save(plt, fig, path)


def _heatmap_channels(result: dict, per_site: int = 3, limit: int = 40) -> list[int]:
    """The channels among the top `per_site` of either setting at most sites (at most `limit`), by id."""
    counts: dict[int, int] = {}
    for pool in ("translation", "monolingual"):
        for row in result["top_channels"][pool]:
            for channel, _ in row[:per_site]:
                counts[channel] = counts.get(channel, 0) + 1
    return sorted(sorted(counts, key=lambda c: (-counts[c], c))[:limit])


def _plot_magnitude(plt, result: dict, magnitudes: dict[str, np.ndarray], path: Path) -> Path:
    """Sites × the channels that are ever among the largest (_heatmap_channels): magnitude / the site's median
    channel per setting (log colour, clipped below at the median; one scale for both), and the translation /
    monolingual ratio of each channel over the site's median-channel ratio (log2: red = grows more under
    translation than the bulk of the channels)."""
    channels, sites = _heatmap_channels(result), result["sites"]
    tr, mono = magnitudes["translation"], magnitudes["monolingual"]

    def over_median(m):  # [S, C]
        return m[:, channels] / np.maximum(np.median(m, axis=1, keepdims=True), 1e-30)

    stand = {pool: np.log10(np.maximum(over_median(m), 1)) for pool, m in (("translation", tr), ("monolingual", mono))}
    vmax = max(float(v.max()) for v in stand.values()) or 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.log2(over_median(tr) / over_median(mono))  # NaN where a channel is 0 in both
    fig, axes = plt.subplots(1, 3, figsize=(3.0 + 3 * 0.15 * len(channels), 1.6 + 0.16 * len(sites)), sharey=True,
                             squeeze=False, layout="constrained")
    for ax, pool in zip(axes[0], ("translation", "monolingual")):
        image = ax.imshow(stand[pool], aspect="auto", interpolation="nearest", cmap="magma", vmin=0, vmax=vmax)
        ax.set_title(f"{pool}: magnitude / site median", fontsize=8)
    ticks = [t for t in (1, 3, 10, 30, 100, 300, 1000) if math.log10(t) <= vmax]
    bar = fig.colorbar(image, ax=axes[0][1], ticks=[math.log10(t) for t in ticks], pad=0.01)
    bar.ax.set_yticklabels([f"×{t}" for t in ticks], fontsize=7)
    image = axes[0][2].imshow(relative, aspect="auto", interpolation="nearest", cmap="coolwarm", vmin=-1, vmax=1)
    axes[0][2].set_title("translation/mono ÷ site's median ratio", fontsize=8)
    bar = fig.colorbar(image, ax=axes[0][2], ticks=[-1, -0.5, 0, 0.5, 1], pad=0.01)
    bar.ax.set_yticklabels(["×0.5", "×0.71", "×1", "×1.41", "×2"], fontsize=7)
    for ax in axes[0]:
        ax.set_xticks(range(len(channels)), [str(c) for c in channels], rotation=90, fontsize=6)
        ax.set_xlabel("channel", fontsize=8)
    axes[0][0].set_yticks(range(len(sites)), sites, fontsize=6)
    return _save(plt, fig, path)


def _plot_settings_overlap(plt, result: dict, path: Path) -> Path:
    """Top-`ratio` overlap (%) of every pair of per-language settings, at the first site kind of each shown
    layer (_panel_layers)."""
    order, kind = result["setting_order"], _kinds(result["sites"])[0]
    index = {site_layer(name): name for name in result["sites"]}
    shown = [index[(layer, kind)] for layer in _panel_layers(result) if (layer, kind) in index]
    cols = min(3, len(shown))
    rows = math.ceil(len(shown) / cols)
    side = 1.2 + 0.17 * len(order)
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols + 1, side * rows), squeeze=False,
                             layout="constrained")
    for ax, name in zip(axes.flat, shown):
        image = ax.imshow(np.asarray(result["setting_overlap"][name]) * 100, vmin=0, vmax=100, cmap="viridis")
        ax.set_xticks(range(len(order)), order, rotation=90, fontsize=6)
        ax.set_yticks(range(len(order)), order, fontsize=6)
        ax.set_title(f"{name}: top-{100 * result['ratio']:g}% overlap (%)", fontsize=8)
    for ax in list(axes.flat)[len(shown):]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes, shrink=0.8)
    return _save(plt, fig, path)


def plot_analysis(result: dict, magnitudes: dict[str, np.ndarray], out_dir: str | Path) -> list[Path]:
    """Write top_channels.png, summary.png, overlap.png, magnitude.png and settings_overlap.png (see the
    _plot_* functions) into out_dir; magnitudes: every setting's [S, H] magnitudes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    return [_plot_top_channels(plt, result, out_dir / "top_channels.png"),
            _plot_summary(plt, result, out_dir / "summary.png"),
            _plot_overlap(plt, result, out_dir / "overlap.png"),
            _plot_magnitude(plt, result, magnitudes, out_dir / "magnitude.png"),
            _plot_settings_overlap(plt, result, out_dir / "settings_overlap.png")]


def write_analysis(result: dict, magnitudes: dict[str, np.ndarray], out_dir: str | Path, overwrite: bool = False,
                   inputs=()) -> list[Path]:
    """analysis.json, magnitudes.npz (every setting's [S, H] magnitudes) and the PNG heatmaps, written into a
    new directory atomically by the rules of tfprune.outdir (an existing one is replaced only with overwrite,
    and only if empty or written by tfprune)."""
    from .outdir import atomic_output_dir, write_marker

    names = ["analysis.json", "magnitudes.npz"]
    with atomic_output_dir(out_dir, overwrite, inputs) as tmp:
        (tmp / "analysis.json").write_text(json.dumps(result, indent=1))
        np.savez_compressed(tmp / "magnitudes.npz", sites=np.asarray(result["sites"]), **{
            key.replace("-", "_"): value for key, value in magnitudes.items()})
        names += [path.name for path in plot_analysis(result, magnitudes, tmp)]
        write_marker(tmp, "analyze", {"model": result.get("model"), "site": result["site"]})
    return [Path(out_dir) / name for name in names]


def add_parser(sub) -> None:
    a = sub.add_parser("analyze", help="large-magnitude features under translation vs monolingual prompts")
    a.add_argument("model", help="local HF directory, hub id, or builtin:FAMILY")
    a.add_argument("--out", default="analysis-out", help="output folder (analysis.json, magnitudes.npz, PNGs)")
    a.add_argument("--overwrite", action="store_true",
                   help="replace an existing output folder: only an empty one or a previous tfprune output")
    a.add_argument("--calib", default="builtin", help="parallel corpus: builtin | PATH (.tsv/.jsonl/folder)")
    a.add_argument("--langs", default=None, help="comma-separated languages paired with English (default: all)")
    a.add_argument("--nsamples", type=int, default=64, help="prompts per pooled setting (split over languages)")
    a.add_argument("--shots", type=int, default=4)
    a.add_argument("--seqlen", type=int, default=512)
    a.add_argument("--site", default="norm", choices=SITES,
                   help="norm: the normalized hidden states the linears read (default); residual: block outputs")
    a.add_argument("--topk", type=int, default=20, help="channels listed per site")
    a.add_argument("--ratio", type=float, default=0.3, help="top-k%% fraction of the per-language overlap matrices")
    a.add_argument("--batch-size", type=int, default=8)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--device", default="cpu")
    a.add_argument("--dtype", default=None)


def run(args) -> int:
    from .calib import load_corpus
    from .evaluation.command import load_for_inference
    from .outdir import preflight_output

    inputs = [Path(p) for p in (args.model, args.calib) if p and Path(p).exists()]
    preflight_output(args.out, args.overwrite, inputs)
    corpus = None if args.calib == "builtin" else load_corpus(args.calib)
    model, tokenizer = load_for_inference(args.model, args.dtype, args.device)
    result, magnitudes = analyze(model, tokenizer, corpus, args.langs.split(",") if args.langs else None,
                                 args.nsamples, args.shots, args.seqlen, args.site, args.topk, args.ratio,
                                 batch_size=args.batch_size, seed=args.seed)
    result["model"] = args.model
    paths = write_analysis(result, magnitudes, args.out, args.overwrite, inputs)
    for row, top in list(zip(result["summary"], result["top_channels"]["translation"]))[:64]:
        print(f"{row['site']:<30} top: {' '.join(str(c) for c, _ in top[:8]):<32} max/median "
              f"{_fmt(row['translation_max_over_median'])}, translation/monolingual: top channel "
              f"×{_fmt(row['top_ratio'])}, median channel ×{_fmt(row['median_ratio'])}")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
