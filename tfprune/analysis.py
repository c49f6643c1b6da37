"""`tfprune analyze`: the paper's analysis of large-magnitude features.

A channel's magnitude at a site (layer) is the L2 norm of that hidden-state channel over the real tokens of
one prompt, averaged over the prompts of a setting (DESIGN §1). Settings: few-shot X→English translation
prompts and monolingual prompts, per language and pooled. Outputs: the top-k channels per site and setting,
the overlap of the top-k% sets of translation vs monolingual per site (and between every pair of per-language
settings), PNG heatmaps and a JSON file.

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

__all__ = ["SITES", "FRACTIONS", "channel_magnitudes", "topk_overlap", "analyze", "plot_analysis", "write_analysis"]

log = logging.getLogger("tfprune")

SITES = ("norm", "residual")
FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)


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


@torch.no_grad()
def analyze(model: nn.Module, tokenizer, corpus: ParallelCorpus | None = None, langs=None, nsamples: int = 64,
            shots: int = 4, seqlen: int = 512, site: str = "norm", topk: int = 20, ratio: float = 0.3,
            fractions=FRACTIONS, batch_size: int = 8, seed: int = 0) -> tuple[dict, dict[str, np.ndarray]]:
    """Translation vs monolingual large-magnitude features of `model`.

    Returns (result, magnitudes): result is JSON-ready (sites, top-k channels per site of the pooled
    'translation' and 'monolingual' settings and of their ratio, the top-k% overlap per site and fraction,
    the per-language settings' overlap matrices at `ratio`); magnitudes maps every setting to [S, H].
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
    result = {
        "site": site, "sites": names, "hidden": int(tr.shape[1]), "topk": k, "ratio": ratio,
        "fractions": list(fractions), "nsamples": nsamples, "shots": shots, "seqlen": seqlen, "seed": seed,
        "langs": [lang for lang in langs if lang != "en"],
        "settings": {s: {"prompts": counts[s], "pool": "translation" if s.endswith("-en") else "monolingual"}
                     for s in order},
        "top_channels": {"translation": top(tr), "monolingual": top(mono),
                         "translation_over_monolingual": top(tr / mono.clamp_min(1e-12))},
        "overlap": overlap.tolist(),
        "setting_order": order,
        "setting_overlap": matrices,
    }
    return result, {key: value.numpy() for key, value in magnitudes.items()}


def plot_analysis(result: dict, magnitudes: dict[str, np.ndarray], out_dir: str | Path,
                  max_panels: int = 6) -> list[Path]:
    """Write magnitude.png (sites × channels, translation / monolingual / log ratio), overlap.png (sites ×
    top-k% fractions) and settings_overlap.png (per-language settings at `ratio`, for up to max_panels sites)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    sites = result["sites"]
    paths = []
    tr, mono = magnitudes["translation"], magnitudes["monolingual"]
    fig, axes = plt.subplots(1, 3, figsize=(18, 2 + 0.25 * len(sites)), squeeze=False)
    panels = [("translation: mean ‖x_j‖₂ (log10)", np.log10(tr + 1e-12)),
              ("monolingual: mean ‖x_j‖₂ (log10)", np.log10(mono + 1e-12)),
              ("log2(translation / monolingual)", np.log2((tr + 1e-12) / (mono + 1e-12)))]
    for ax, (title, data) in zip(axes[0], panels):
        image = ax.imshow(data, aspect="auto", interpolation="nearest", cmap="viridis" if "log10" in title else "coolwarm")
        ax.set_title(title)
        ax.set_xlabel("channel")
        ax.set_yticks(range(len(sites)), sites, fontsize=7)
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    paths.append(out_dir / "magnitude.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    overlap = np.asarray(result["overlap"]) * 100
    fig, ax = plt.subplots(figsize=(2 + 0.9 * len(result["fractions"]), 1.5 + 0.3 * len(sites)))
    image = ax.imshow(overlap, aspect="auto", vmin=0, vmax=100, cmap="magma")
    ax.set_xticks(range(len(result["fractions"])), [f"{100 * f:g}%" for f in result["fractions"]])
    ax.set_yticks(range(len(sites)), sites, fontsize=7)
    ax.set_xlabel("top-k% of channels")
    ax.set_title("overlap of top-k% channels: translation vs monolingual (%)")
    if len(sites) <= 40:
        for (row, col), value in np.ndenumerate(overlap):
            ax.text(col, row, f"{value:.0f}", ha="center", va="center", fontsize=6, color="w" if value < 60 else "k")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    paths.append(out_dir / "overlap.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    order = result["setting_order"]
    chosen = sorted({0, len(sites) // 2, len(sites) - 1} | set(range(0, len(sites), max(1, len(sites) // max_panels))))
    chosen = chosen[:max_panels]
    side = 1.5 + 0.16 * len(order)
    fig, axes = plt.subplots(1, len(chosen), figsize=(1 + side * len(chosen), side + 0.5), squeeze=False)
    for ax, index in zip(axes[0], chosen):
        matrix = np.asarray(result["setting_overlap"][sites[index]]) * 100
        image = ax.imshow(matrix, vmin=0, vmax=100, cmap="magma")
        ax.set_xticks(range(len(order)), order, rotation=90, fontsize=6)
        ax.set_yticks(range(len(order)), order, fontsize=6)
        ax.set_title(f"{sites[index]}: top-{100 * result['ratio']:g}% overlap", fontsize=8)
    fig.colorbar(image, ax=list(axes[0]))
    paths.append(out_dir / "settings_overlap.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


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
    for name, row in list(zip(result["sites"], result["top_channels"]["translation"]))[:64]:
        print(f"{name:<32} top: {' '.join(str(c) for c, _ in row[:10])}")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
