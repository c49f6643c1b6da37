"""Vocabulary trimming on the real model (issue 15): exactness on held-out text, kept tokens per reason,
checkpoint sizes, greedy-decode tokens/s and peak RSS of dense / dense + head kernel / 2:4 / trimmed / 2:4 + trimmed.

    .venv/bin/python benchmarks/bench_vocab.py --model ~/.cache/tfprune/gemma3-270m [--threads 2] [--rounds 3]
                                               [--steps 32] [--json out.json] [--workdir DIR]

Exactness (fp32): for each language set, by script and by the built-in corpus, the held-out sentences below
(written for this benchmark, none in the built-in corpus) are tokenized by the original and the trimmed
tokenizer (texts segmented identically, share of the original tokens outside the kept set) and scored by the
original model and the trimmed one: max |Δ log p| between the trimmed model's next-token log-probabilities
and the original's renormalised over the kept ids (where the tokens agree), perplexity of the full original
model vs the trimmed one (per original token, so that the corpus mode's other segmentation stays comparable).

Speed and memory (bf16, --threads): checkpoints written into --workdir: dense (bf16), 2:4 (magnitude 2:4 on
every decoder linear, compressed-tensors), and both trimmed by `tfprune.vocab.trim_checkpoint` per set. The
baseline "dense" is transformers' model as it loads (torch's kernels); every other row is loaded with
`tfprune.from_pretrained` (2:4 linears as SparseLinear: the CPU decode kernel; the LM head a DenseDecodeLinear:
the dense bf16 decode kernel), "dense + head kernel" being the dense checkpoint so loaded. Greedy decoding of
--steps tokens after a held-out prompt, --rounds interleaved rounds (the order reversed every other round);
tokens/s = 1 / the median time of a decode step over all rounds (robust to the bursts of other jobs on a shared
machine; their interquartile range is recorded); each timed decode starts once other processes use fewer than
--quiet cores (waiting up to --patience seconds; what was measured is recorded). Peak RSS (VmHWM): each
checkpoint loaded and decoded once in a fresh process.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tfprune.bench.timing import machine_info, summarize
from tfprune.compat import forward_with_cache

SETS = {"de,fr,es,ru": ("de", "fr", "es", "ru"), "zh,ja": ("zh", "ja")}
HELD_OUT = {
    "de": ["Meine Schwester arbeitet seit drei Jahren als Ärztin in einem kleinen Krankenhaus am Bodensee.",
           "Wenn der Zug Verspätung hat, verpassen wir den Anschluss nach München.",
           "Im Herbst färben sich die Blätter gelb, rot und braun.",
           "Könnten Sie mir bitte sagen, wie spät es ist?",
           "Der Bäcker an der Ecke verkauft die besten Brezeln der ganzen Stadt.",
           "Nach dem Abendessen spielten die Kinder noch eine Runde Schach."],
    "fr": ["Ma grand-mère prépare toujours une tarte aux pommes le dimanche.",
           "Le musée est fermé le mardi, mais ouvert tous les autres jours.",
           "Il a neigé toute la nuit et les routes sont glissantes ce matin.",
           "Pourriez-vous m'indiquer le chemin de la bibliothèque, s'il vous plaît ?",
           "Les élèves ont présenté leur projet devant toute l'école.",
           "Après la pluie, un magnifique arc-en-ciel est apparu au-dessus du lac."],
    "es": ["Mi hermano trabaja como ingeniero en una empresa de energía solar.",
           "Los sábados por la tarde vamos al cine con nuestros amigos.",
           "¿Has visto mis llaves? No las encuentro por ninguna parte.",
           "El tren hacia Sevilla sale del andén número cuatro.",
           "En otoño las calles se llenan de hojas secas y castañas.",
           "La profesora explicó la lección con mucha paciencia."],
    "ru": ["Моя сестра уже три года работает врачом в небольшой больнице.",
           "Если поезд опоздает, мы не успеем на пересадку в Москве.",
           "Осенью листья на деревьях становятся жёлтыми и красными.",
           "Скажите, пожалуйста, как пройти к библиотеке?",
           "После ужина дети ещё немного поиграли в шахматы.",
           "Зимой в нашем городе часто идёт снег и дуют сильные ветры."],
    "zh": ["我姐姐在一家小医院当医生已经三年了。",
           "如果火车晚点，我们就赶不上去上海的换乘了。",
           "秋天的时候，树叶会变成黄色和红色。",
           "请问，去图书馆怎么走？",
           "吃完晚饭以后，孩子们又下了一盘棋。",
           "冬天我们这里经常下雪，风也很大。"],
    "ja": ["姉は小さな病院で医者として三年間働いています。",
           "電車が遅れたら、大阪での乗り換えに間に合いません。",
           "秋になると、木の葉が黄色や赤に変わります。",
           "すみません、図書館へはどう行けばいいですか。",
           "晩ご飯の後、子どもたちはもう一局将棋を指しました。",
           "冬になると、この町ではよく雪が降り、風も強いです。"],
}


def check_held_out() -> None:
    from tfprune.calib import builtin_corpus

    corpus = "\n".join(text for rows in builtin_corpus().sentences.values() for text in rows)
    inside = [text for texts in HELD_OUT.values() for text in texts if text in corpus]
    if inside:
        raise SystemExit(f"held-out sentences found in the built-in corpus: {inside}")


@torch.inference_mode()
def next_token_logits(model, ids: list[int]) -> torch.Tensor:
    """fp32 next-token logits [len(ids) - 1, V] of a tokenized text (bos first)."""
    return model(input_ids=torch.tensor([ids])).logits[0, :-1].float()


def exactness(model, tokenizer, langs, by: str) -> dict:
    """Trim a copy of the fp32 model by `by` and compare it with the original on the held-out texts."""
    from tfprune.vocab import TrimOptions, trim_vocab

    trimmed = copy.deepcopy(model)
    began = time.perf_counter()
    trimmed_tokenizer, plan = trim_vocab(trimmed, tokenizer, TrimOptions(langs, by=by))
    seconds = time.perf_counter() - began
    kept = list(plan.selection.kept)
    kept_set = set(kept)
    texts = [text for lang in langs for text in HELD_OUT[lang]]
    dropped = torch.ones(plan.selection.original_size, dtype=torch.bool)
    dropped[kept] = False
    identical = outside = tokens = 0
    nll_original = nll_trimmed = dropped_mass = 0.0
    rest_original = rest_trimmed = 0.0  # without the first prediction (the token after bos, unconditioned)
    max_delta = max_logit_delta = None
    for text in texts:
        before, after = tokenizer(text).input_ids, trimmed_tokenizer(text).input_ids
        outside += sum(index not in kept_set for index in before)
        tokens += len(before) - 1
        reference_logits, got_logits = next_token_logits(model, before), next_token_logits(trimmed, after)
        reference, got = torch.log_softmax(reference_logits, -1), torch.log_softmax(got_logits, -1)
        per_token = [-reference.gather(1, torch.tensor(before[1:])[:, None])[:, 0],
                     -got.gather(1, torch.tensor(after[1:])[:, None])[:, 0]]
        nll_original, nll_trimmed = nll_original + per_token[0].sum().item(), nll_trimmed + per_token[1].sum().item()
        rest_original += per_token[0][1:].sum().item()
        rest_trimmed += per_token[1][1:].sum().item()
        dropped_mass += reference.exp()[:, dropped[: reference.shape[1]]].sum().item()
        if [kept[i] for i in after] == before:
            identical += 1
            restricted = torch.log_softmax(reference_logits[:, kept], dim=-1)  # renormalised over the kept ids
            max_delta = max(max_delta or 0.0, float((got - restricted).abs().max()))
            max_logit_delta = max(max_logit_delta or 0.0, float((got_logits - reference_logits[:, kept]).abs().max()))
    ppl_original, ppl_trimmed = math.exp(nll_original / tokens), math.exp(nll_trimmed / tokens)
    row = {"set": ",".join(langs), "by": by, "kept": len(kept), "counts": plan.selection.counts,
           "texts": len(texts), "identical": identical, "tokens": tokens, "outside": outside,
           "outside_share": outside / tokens, "max_abs_dlogprob": max_delta, "max_abs_dlogit": max_logit_delta,
           "ppl_original": ppl_original,
           "ppl_trimmed": ppl_trimmed, "ppl_change": ppl_trimmed / ppl_original - 1,
           "ppl_change_after_first": math.exp((rest_trimmed - rest_original) / (tokens - len(texts))) - 1,
           "dropped_mass": dropped_mass / tokens, "plan_seconds": seconds}
    print(f"exactness {row['set']} by {by}: kept {len(kept):,}; {identical}/{len(texts)} texts segmented "
          f"identically, {outside}/{tokens} held-out tokens outside the kept set; max |dlogp| {max_delta}, "
          f"|dlogit| {max_logit_delta}; "
          f"ppl {ppl_original:.3f} -> {ppl_trimmed:.3f} ({row['ppl_change']:+.2%}; "
          f"{row['ppl_change_after_first']:+.2%} after the first token); mean probability on dropped "
          f"tokens {row['dropped_mass']:.2%}", flush=True)
    return row


def safetensors_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in Path(folder).glob("*.safetensors"))


@torch.no_grad()
def prune_decoder_24_(model) -> int:
    """Magnitude 2:4 on every nn.Linear but the LM head, in place: decode speed does not depend on which
    weights are kept, and magnitude needs no calibration pass. Returns how many linears were pruned."""
    from tfprune.bench.linear import prune_24_

    head = model.get_output_embeddings()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head
               and m.in_features % 4 == 0]
    for module in linears:
        prune_24_(module.weight.data)
    return len(linears)


def write_checkpoints(model_dir: Path, work: Path) -> dict[str, Path]:
    """dense bf16, 2:4 compressed-tensors bf16, and both trimmed per set: {name: directory}."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import tfprune
    from tfprune.vocab import TrimOptions, trim_checkpoint

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dirs = checkpoint_dirs(work)
    if all((folder / "config.json").is_file() for folder in dirs.values()):
        print(f"reusing the checkpoints in {work}", flush=True)
        return dirs
    dirs = {"dense": work / "dense", "2:4": work / "sparse24"}
    model.save_pretrained(dirs["dense"], safe_serialization=True)
    tokenizer.save_pretrained(dirs["dense"])
    pruned = prune_decoder_24_(model)
    tfprune.save_pruned(model, tokenizer, dirs["2:4"], format="compressed-tensors")
    print(f"wrote dense bf16 and 2:4 compressed-tensors ({pruned} decoder linears 2:4)", flush=True)
    del model
    for name, target in checkpoint_dirs(work).items():
        if name not in dirs and target not in dirs.values():
            base, langs = ("2:4" if name.startswith("2:4") else "dense"), SETS[name.rsplit(" ", 1)[1]]
            print(trim_checkpoint(dirs[base], target, TrimOptions(langs), progress=False).line(), flush=True)
    return checkpoint_dirs(work)


PLAIN = "dense"  # the baseline: transformers' model as it loads, torch's kernels (the head too)
HEAD_KERNEL = "dense + head kernel"  # the same checkpoint with the LM head on tfprune's dense decode kernel


def checkpoint_dirs(work: Path) -> dict[str, Path]:
    """{variant: its checkpoint directory under work}."""
    dirs = {PLAIN: work / "dense", HEAD_KERNEL: work / "dense", "2:4": work / "sparse24"}
    for name, langs in SETS.items():
        dirs[f"trimmed {name}"] = work / f"dense-{'-'.join(langs)}"
        dirs[f"2:4 + trimmed {name}"] = work / f"sparse24-{'-'.join(langs)}"
    return dirs


def load(folder: Path, decode_head: bool = True):
    """(model, tokenizer): tfprune.from_pretrained in bf16; decode_head=False: the plain transformers model
    (tfprune.from_pretrained of a dense checkpoint is AutoModelForCausalLM plus the LM head's decode kernel)."""
    from transformers import AutoTokenizer

    import tfprune

    model = tfprune.from_pretrained(folder, dtype="bfloat16", decode_head=decode_head)
    return model.eval(), AutoTokenizer.from_pretrained(folder)


@torch.inference_mode()
def greedy(model, prompt: torch.Tensor, steps: int) -> tuple[list[int], list[float]]:
    """(generated ids, seconds of each decode step) after an untimed prefill of prompt [1, P]."""
    logits, cache = forward_with_cache(model, prompt)
    token = logits[:, -1:].argmax(-1)
    ids, seconds = [int(token)], []
    for _ in range(steps - 1):
        start = time.perf_counter()
        logits, cache = forward_with_cache(model, token, cache)
        token = logits[:, -1:].argmax(-1)
        ids.append(int(token))
        seconds.append(time.perf_counter() - start)
    return ids, seconds


def busy_cores(interval: float = 0.5) -> float:
    """CPU cores kept busy by other processes over `interval` seconds (this one sleeps meanwhile)."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait (jiffies)

    (total0, idle0), _ = sample(), time.sleep(interval)
    total1, idle1 = sample()
    return (os.cpu_count() or 1) * (1 - (idle1 - idle0) / max(total1 - total0, 1))


def wait_for_quiet(limit: float, patience: float) -> float:
    """Wait (at most `patience` seconds) until other processes use fewer than `limit` cores: on a shared
    machine one busy neighbour thread stalls every OpenMP region of a 2-thread decode step. Returns the
    busy cores measured last."""
    deadline = time.monotonic() + patience
    busy = busy_cores()
    while busy >= limit and time.monotonic() < deadline:
        busy = busy_cores()
    return busy


@torch.inference_mode()
def step_breakdown(model, prompt: torch.Tensor, steps: int) -> dict:
    """Milliseconds per decode step (medians) spent in the LM head, in the decoder's linear layers (nn.Linear and
    SparseLinear) and in everything else (norms, attention, rotary, cache, argmax, Python), timed with forward
    hooks on one extra greedy run."""
    from tfprune.sparse import DenseDecodeLinear, SparseLinear

    head = model.get_output_embeddings()
    spent = {"head": 0.0, "linears": 0.0}
    started: dict[int, float] = {}
    handles = []
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, SparseLinear, DenseDecodeLinear)):
            kind = "head" if module is head else "linears"
            handles.append(module.register_forward_pre_hook(
                lambda m, _args: started.__setitem__(id(m), time.perf_counter())))
            handles.append(module.register_forward_hook(
                lambda m, _args, _out, kind=kind: spent.__setitem__(kind, spent[kind] + time.perf_counter()
                                                                    - started[id(m)])))
    logits, cache = forward_with_cache(model, prompt)
    token = logits[:, -1:].argmax(-1)
    per_step = {"head": [], "linears": [], "rest": []}
    try:
        for _ in range(steps - 1):
            spent.update(head=0.0, linears=0.0)
            start = time.perf_counter()
            logits, cache = forward_with_cache(model, token, cache)
            token = logits[:, -1:].argmax(-1)
            total = time.perf_counter() - start
            per_step["head"].append(spent["head"])
            per_step["linears"].append(spent["linears"])
            per_step["rest"].append(total - spent["head"] - spent["linears"])
    finally:
        for handle in handles:
            handle.remove()
    return {kind: summarize(values)["median"] * 1e3 for kind, values in per_step.items()}


def kept_ids(folder: Path) -> list[int] | None:
    record = Path(folder) / "tfprune-vocab.json"
    return json.loads(record.read_text())["kept"] if record.is_file() else None


def speed(dirs: dict[str, Path], set_name: str, steps: int, rounds: int, quiet: float, patience: float) -> list[dict]:
    """Interleaved greedy decoding of dense (transformers), dense + head kernel, 2:4, trimmed, 2:4 + trimmed for
    one language set."""
    names = [PLAIN, HEAD_KERNEL, "2:4", f"trimmed {set_name}", f"2:4 + trimmed {set_name}"]
    prompt_text = HELD_OUT[SETS[set_name][0]][0]
    models = {}
    for name in names:
        model, tokenizer = load(dirs[name], decode_head=name != PLAIN)
        models[name] = (model, tokenizer(prompt_text, return_tensors="pt").input_ids)
        greedy(model, models[name][1], 4)  # warm-up: decode layouts, caches
    times = {name: [] for name in names}
    busy = {name: [] for name in names}
    outputs = {}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            busy[name].append(wait_for_quiet(quiet, patience))
            ids, seconds = greedy(*models[name], steps)
            times[name] += seconds
            kept = kept_ids(dirs[name])
            outputs[name] = [kept[i] for i in ids] if kept else ids
    breakdown = {}
    for name in names:
        wait_for_quiet(quiet, patience)
        breakdown[name] = step_breakdown(*models[name], steps)
    rows = []
    for name in names:
        stats = summarize(times[name])
        untrimmed = "2:4" if name.startswith("2:4") else "dense"
        row = {"set": set_name, "model": name, "tokens_per_s": 1 / stats["median"],
               "q1_q3_tokens_per_s": (1 / stats["q3"], 1 / stats["q1"]),
               "samples_s": times[name], "busy_cores_before": busy[name], "step_ms": breakdown[name],
               "vocab": models[name][0].config.vocab_size,
               "same_tokens_as_untrimmed": sum(a == b for a, b in zip(outputs[name], outputs[untrimmed]))}
        rows.append(row)
    dense = rows[0]["tokens_per_s"]
    for row in rows:
        row["speedup_vs_dense"] = row["tokens_per_s"] / dense
        print(f"speed {set_name} {row['model']:>24}: {row['tokens_per_s']:6.1f} tok/s ({row['speedup_vs_dense']:.2f}x "
              f"dense), greedy tokens as untrimmed {row['same_tokens_as_untrimmed']}/{steps}", flush=True)
    del models
    return rows


def peak_rss(folder: Path, prompt: str, steps: int, threads: int, decode_head: bool) -> dict:
    """Peak RSS of loading `folder` and decoding once, in a fresh process."""
    command = [sys.executable, __file__, "--worker", str(folder), "--prompt", prompt, "--steps", str(steps),
               "--threads", str(threads)] + ([] if decode_head else ["--plain"])
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def vm_hwm_bytes() -> int:
    """This process's peak resident memory since its exec (VmHWM; ru_maxrss would include the parent's peak,
    which Linux carries over a fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(folder: str, prompt: str, steps: int, decode_head: bool) -> None:
    model, tokenizer = load(Path(folder), decode_head)
    greedy(model, tokenizer(prompt, return_tensors="pt").input_ids, steps)
    print(json.dumps({"peak_rss_bytes": vm_hwm_bytes()}))


def markdown(record: dict) -> str:
    lines = []
    if "exactness" in record:
        lines += ["| set | by | kept | special | added | byte | script | common | corpus | closure | texts identical "
                  "| held-out tokens outside | max \\|Δ log p\\| | ppl original → trimmed | without the 1st token "
                  "| p(dropped) |", "|" + "---|" * 16]
        for row in record["exactness"]:
            c = row["counts"]
            delta = "–" if row["max_abs_dlogprob"] is None else f"{row['max_abs_dlogprob']:.1e}"
            lines.append(f"| {row['set']} | {row['by']} | {row['kept']:,} | {c['special']:,} | {c['added']:,} | "
                         f"{c['byte']} | {c['script']:,} | {c['common']:,} | {c['corpus']:,} | {c['closure']:,} | "
                         f"{row['identical']}/{row['texts']} | {row['outside']}/{row['tokens']} "
                         f"({row['outside_share']:.1%}) | {delta} | {row['ppl_original']:.2f} → "
                         f"{row['ppl_trimmed']:.2f} ({row['ppl_change']:+.2%}) | {row['ppl_change_after_first']:+.2%} "
                         f"| {row['dropped_mass']:.2%} |")
    if "speed" in record:
        lines += ["", "| checkpoint | safetensors MB |", "|---|---|"]
        lines += [f"| {name} | {size / 1e6:,.0f} |" for name, size in record["sizes"].items()]
        lines += ["", "| set | model | vocab | decode tok/s | vs dense | ms/step: LM head + decoder linears + rest "
                  "| peak RSS GiB | greedy tokens as untrimmed | other jobs' cores |", "|" + "---|" * 9]
        for row in record["speed"]:
            ms = row["step_ms"]
            lines.append(f"| {row['set']} | {row['model']} | {row['vocab']:,} | {row['tokens_per_s']:.1f} | "
                         f"{row['speedup_vs_dense']:.2f}× | {ms['head']:.1f} + {ms['linears']:.1f} + {ms['rest']:.1f} | "
                         f"{row['peak_rss_bytes'] / 2**30:.2f} | "
                         f"{row['same_tokens_as_untrimmed']}/{record['settings']['steps']} | "
                         f"{max(row['busy_cores_before']):.1f} |")
    return "\n".join(lines)


def speed_and_memory(model_dir: Path, args) -> dict:
    """{sizes, speed}: the checkpoints written (or reused), decoded interleaved, then once each for peak RSS."""
    record = {}
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-vocab-"))
    try:
        dirs = write_checkpoints(model_dir, work)
        record["sizes"] = {"original (fp32)": safetensors_bytes(model_dir),
                           **{name: safetensors_bytes(folder) for name, folder in dirs.items() if name != HEAD_KERNEL}}
        record["speed"] = []
        for set_name in args.sets.split(":"):
            load_before = os.getloadavg()[0]
            rows = speed(dirs, set_name, args.steps, args.rounds, args.quiet, args.patience)
            for row in rows:
                row["load_average"] = (load_before, os.getloadavg()[0])
            for row in rows:
                memory = peak_rss(dirs[row["model"]], HELD_OUT[SETS[set_name][0]][0], args.steps, args.threads,
                                  row["model"] != PLAIN)
                row["peak_rss_bytes"] = memory["peak_rss_bytes"]
            record["speed"] += rows
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(Path.home() / ".cache" / "tfprune" / "gemma3-270m"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--json", default=None, help="write the record here")
    parser.add_argument("--workdir", default=None,
                        help="where the checkpoints go, kept and reused by the next run (default: a temporary folder)")
    parser.add_argument("--stages", default="exactness,speed", help="exactness, speed or both")
    parser.add_argument("--sets", default=":".join(SETS), help=f"language sets to time, ':'-separated ({':'.join(SETS)})")
    parser.add_argument("--quiet", type=float, default=0.3,
                        help="start a timed decode only when other processes use fewer cores than this")
    parser.add_argument("--patience", type=float, default=90, help="seconds to wait for that at most")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--prompt", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        worker(args.worker, args.prompt, args.steps, not args.plain)
        return 0
    import logging

    from transformers import AutoModelForCausalLM, AutoTokenizer

    logging.basicConfig(level=logging.WARNING)
    check_held_out()
    model_dir = Path(args.model)
    began = time.perf_counter()
    record = {"machine": machine_info(), "settings": vars(args), "load_average_start": os.getloadavg()}
    stages = set(args.stages.split(","))
    if "exactness" in stages:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        record["exactness"] = [exactness(model, tokenizer, langs, by) for langs in SETS.values()
                               for by in ("script", "corpus")]
        del model
    if "speed" in stages:
        record.update(speed_and_memory(model_dir, args))
    record["load_average_end"] = os.getloadavg()
    record["seconds"] = time.perf_counter() - began
    print(markdown(record))
    print(f"load average {record['load_average_start']} -> {record['load_average_end']}, {record['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
