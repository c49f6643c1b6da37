"""Every bad input through the CLI: exit code 2, one line naming the file / tensor / option and the fix, no
traceback, and nothing outside the run's own temporary files changed (the input model and a neighbour
directory are hashed before and after). Data loss first."""
import errno
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tfprune.builtin import build_model
from tfprune.cli import main
from tfprune.engine import streaming
from tfprune.engine.manifest import MANIFEST_FILE, partial_dir
from tfprune.errors import TfpruneError
from tfprune.outdir import LOCK_FILE

FAST = ["--nsamples", "4", "--seqlen", "32", "--batch-size", "2", "--quiet"]
FEW_STEPS = ["--reconstruct", "4"]  # at 2:4, where the test is not about the fit (the default 256: time)
ENGINES = [["--no-streaming"], ["--streaming", "--shard-size", "90KB"]]


def tree_digest(*folders: Path) -> str:
    """sha256 over the relative paths, link targets and bytes of everything under `folders`."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            digest.update(str(path.relative_to(folder)).encode())
            if path.is_symlink():
                digest.update(os.readlink(path).encode())
            elif path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("source") / "model"
    model, tokenizer = build_model("llama", layers=2)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def world(tmp_path, saved_model):
    """A private copy of the model and a neighbour directory with a user's file, in tmp_path."""
    model = tmp_path / "model"
    shutil.copytree(saved_model, model)
    neighbour = tmp_path / "notes"
    neighbour.mkdir()
    (neighbour / "thesis.txt").write_text("four years of work")
    return model, neighbour


def run_bad(capsys, argv, *untouched: Path, match: str, code: int = 2) -> str:
    """Run the CLI expecting `code` and a one-line error containing `match`; the `untouched` trees unchanged."""
    before = tree_digest(*untouched)
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("tfprune: error:")]
    assert len(errors) == 1, err
    assert match in errors[0], errors[0]
    assert tree_digest(*untouched) == before
    return errors[0]


# -------------------------------------------------------------------------------------------- data loss
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_out_is_contains_or_lies_inside_the_input(world, capsys, engine, overwrite, tmp_path):
    model, neighbour = world
    for out, relation in ((model, "is the input"), (tmp_path, "contains the input"),
                          (model / "pruned", "lies inside the input")):
        run_bad(capsys, ["prune", str(model), "--out", str(out), *FAST, *engine, *overwrite], model, neighbour,
                match=relation)
    link = tmp_path / "link"
    link.symlink_to(model)  # a path through a link that resolves inside the input
    run_bad(capsys, ["prune", str(model), "--out", str(link / "sub"), *FAST, *engine, *overwrite], model,
            neighbour, match="lies inside the input")


def test_out_containing_a_calibration_file_is_refused(world, capsys, tmp_path):
    model, neighbour = world
    out = tmp_path / "old-run"
    assert main(["prune", str(model), "--out", str(out), *FAST]) == 0
    corpus = out / "corpus.tsv"
    corpus.write_text("en\tde\n" + "".join(f"Sentence {i}.\tSatz {i}.\n" for i in range(6)))
    run_bad(capsys, ["prune", str(model), "--out", str(out), "--overwrite", "--calib", str(corpus), *FAST], out,
            match="contains the input")


@pytest.mark.parametrize("engine", ENGINES)
def test_overwrite_replaces_only_tfprune_outputs(world, capsys, engine, tmp_path):
    model, _ = world
    run_bad(capsys, ["prune", str(model), "--out", str(world[1]), *FAST, *engine], world[1],
            match="exists and is not empty")
    run_bad(capsys, ["prune", str(model), "--out", str(world[1]), "--overwrite", *FAST, *engine], world[1],
            match="not a tfprune output")
    out = tmp_path / "out"
    assert main(["prune", str(model), "--out", str(out), *FAST, *engine]) == 0
    assert main(["prune", str(model), "--out", str(out), "--overwrite", "--sparsity", "0.6", *FAST, *engine]) == 0
    assert json.loads((out / "tfprune.json").read_text())["config"]["sparsity"] == 0.6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "notes", "out"]  # nothing moved aside is left


@pytest.mark.parametrize("engine", ENGINES)
def test_symlink_and_dangling_symlink_outputs(world, capsys, engine, tmp_path):
    model, neighbour = world
    link = tmp_path / "out"
    link.symlink_to(neighbour)
    run_bad(capsys, ["prune", str(model), "--out", str(link), "--overwrite", *FAST, *engine], neighbour, model,
            match="is a symbolic link")
    assert link.is_symlink() and os.readlink(link) == str(neighbour)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    run_bad(capsys, ["prune", str(model), "--out", str(dangling), *FAST, *engine], model, match="symbolic link")
    assert dangling.is_symlink() and not (tmp_path / "nowhere").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("engine", ENGINES)
def test_an_output_that_appears_during_the_run_is_never_moved_or_deleted(world, capsys, engine, tmp_path,
                                                                         monkeypatch):
    model, neighbour = world
    out = tmp_path / "out"
    from tfprune import outdir

    original = outdir.commit_output_dir

    def someone_writes_out_first(tmp, target, *args, **kwargs):
        out.mkdir()
        (out / "theirs.txt").write_text("not yours")
        return original(tmp, target, *args, **kwargs)

    monkeypatch.setattr(outdir, "commit_output_dir", someone_writes_out_first)
    monkeypatch.setattr(streaming, "commit_output_dir", someone_writes_out_first)
    message = run_bad(capsys, ["prune", str(model), "--out", str(out), "--overwrite", *FAST, *engine], model,
                      neighbour, match="changed while this run was writing")
    assert (out / "theirs.txt").read_text() == "not yours" and sorted(os.listdir(out)) == ["theirs.txt"]
    kept = Path(message.rsplit("the finished output is in ", 1)[1].split(",")[0])
    assert (kept / "tfprune.json").is_file()  # the run's result is kept where the message says


def test_stale_temporaries_of_killed_runs_are_removed_but_live_ones_kept(world, tmp_path):
    model, _ = world
    stale, live = tmp_path / ".out.tmp-0000dead", tmp_path / ".out.tmp-0000live"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
        (folder / LOCK_FILE).touch()
    foreign = tmp_path / ".out.tmp-notours"  # no lock file: not ours
    foreign.mkdir()
    holder = os.open(live / LOCK_FILE, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        assert main(["prune", str(model), "--out", str(tmp_path / "out"), *FAST]) == 0
    finally:
        os.close(holder)
    assert not stale.exists() and live.exists() and foreign.exists()


# --------------------------------------------------------------------------------- silently wrong results
@pytest.mark.parametrize("change", ["tensor bytes", "config.json"])
def test_resume_after_the_input_changed_is_refused(world, capsys, change, tmp_path, interrupt_streaming):
    model, _ = world
    out = tmp_path / "out"
    command = ["prune", str(model), "--out", str(out), *FAST, *ENGINES[1]]
    interrupt_streaming(1)
    assert main(command) == 130
    interrupt_streaming(None)
    assert (partial_dir(out) / MANIFEST_FILE).is_file()
    if change == "tensor bytes":  # same header, other values (the file's size and header are unchanged)
        tensors = load_file(model / "model.safetensors")
        tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"] * 2
        stat = (model / "model.safetensors").stat()
        save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
        os.utime(model / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even the time restored
    else:
        config = json.loads((model / "config.json").read_text())
        config["rms_norm_eps"] = 1e-3
        (model / "config.json").write_text(json.dumps(config))
    run_bad(capsys, command, model, match="different command")
    assert not out.exists()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("tensor", ["model.layers.1.self_attn.o_proj.weight", "lm_head.weight",
                                    "model.layers.0.post_attention_layernorm.weight", "model.norm.weight"])
def test_nan_and_inf_weights_are_refused_naming_the_tensor(world, capsys, engine, tensor, tmp_path):
    model, neighbour = world
    tensors = load_file(model / "model.safetensors")
    tensors[tensor].view(-1)[3] = float("nan") if "norm" in tensor else float("inf")
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    for method in (["--method", "wanda"], ["--method", "sparsegpt"]):
        run_bad(capsys, ["prune", str(model), "--out", str(out), *FAST, *engine, *method], model, neighbour,
                match=f"tensor {tensor}")
        assert not out.exists() and not partial_dir(out).exists()  # the partial output of this run is removed


@pytest.mark.parametrize("engine", ENGINES)
def test_an_index_that_omits_a_shard_and_shapes_that_disagree(tmp_path, capsys, engine):
    model, tokenizer = build_model("llama", layers=2)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="100KB")
    tokenizer.save_pretrained(sharded)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    dropped = sorted(set(index["weight_map"].values()))[1]
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != dropped}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    run_bad(capsys, ["prune", str(sharded), "--out", str(tmp_path / "a"), *FAST, *engine], sharded,
            match=f"does not list {dropped}")
    (sharded / dropped).unlink()  # a consistent index, but a shard's tensors are gone
    run_bad(capsys, ["prune", str(sharded), "--out", str(tmp_path / "a"), *FAST, *engine], sharded,
            match="lacks" if engine == ENGINES[0] else "has no tensor for")
    wrong = tmp_path / "wrong"
    model.save_pretrained(wrong)
    tokenizer.save_pretrained(wrong)
    config = json.loads((wrong / "config.json").read_text())
    config["intermediate_size"] = 96
    (wrong / "config.json").write_text(json.dumps(config))
    run_bad(capsys, ["prune", str(wrong), "--out", str(tmp_path / "b"), *FAST, *engine], wrong,
            match="disagree")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_compressed_tensors_checkpoint_pruned_to_dense_loads(world, tmp_path):
    from transformers import AutoModelForCausalLM

    model, _ = world
    packed = tmp_path / "packed"
    assert main(["prune", str(model), "--out", str(packed), "--pattern", "2:4", "--format", "compressed-tensors",
                 *FAST, *FEW_STEPS]) == 0
    dense = tmp_path / "dense"
    assert main(["prune", str(packed), "--out", str(dense), "--pattern", "2:4", *FAST, *FEW_STEPS]) == 0
    assert "quantization_config" not in json.loads((dense / "config.json").read_text())
    reloaded = AutoModelForCausalLM.from_pretrained(dense)
    assert torch.isfinite(reloaded(input_ids=torch.tensor([[1, 5, 9]])).logits).all()


@pytest.mark.parametrize("tamper,match", [
    ("three bits", "does not mark exactly 2 of 4"),
    ("four bits", "does not mark exactly 2 of 4"),
    ("wrong shape", "kept values for a"),
    ("short values", "kept values for a"),
])
def test_tampered_packed_tensors_are_refused_by_inspect_and_from_pretrained(world, capsys, tmp_path, tamper, match):
    import tfprune

    model, _ = world
    packed = tmp_path / "packed"
    assert main(["prune", str(model), "--out", str(packed), "--pattern", "2:4", "--format", "compressed-tensors",
                 *FAST, *FEW_STEPS]) == 0
    tensors = load_file(packed / "model.safetensors")
    prefix = "model.layers.0.mlp.up_proj"
    if tamper == "three bits":
        tensors[f"{prefix}.bitmask"][2, 1] |= 0b1110
    elif tamper == "four bits":
        tensors[f"{prefix}.bitmask"][0, 0] = 0xFF
    elif tamper == "wrong shape":
        tensors[f"{prefix}.shape"] = torch.tensor([[128], [128]])
    else:
        tensors[f"{prefix}.compressed"] = tensors[f"{prefix}.compressed"][:, :-4].contiguous()
    save_file(tensors, packed / "model.safetensors", metadata={"format": "pt"})
    run_bad(capsys, ["inspect", str(packed)], packed, match=match)
    with pytest.raises(TfpruneError, match=match if tamper != "wrong shape" else "does not fit|kept values"):
        tfprune.from_pretrained(packed)


@pytest.mark.parametrize("option,match", [
    (["--owl", "nan,0.08"], "owl must be two finite numbers"),
    (["--owl", "inf,0.08"], "owl must be two finite numbers"),
    (["--owl", "5"], "owl must be two finite numbers"),
    (["--shard-size", "0", "--streaming"], "must be positive"),
    (["--shard-size=-5GB", "--streaming"], "must be positive"),
    (["--shard-size", "nanGB", "--streaming"], "cannot parse size"),
    (["--device", "tpu"], "--device 'tpu'"),
    (["--device", "meta"], "tfprune runs on cpu or cuda"),
    (["--dtype", "int4"], "--dtype must be one of"),
    (["--reconstruct=-1"], "reconstruct must be a number of steps >= 0"),
    (["--reconstruct-lr", "nan"], "reconstruct_lr must be a learning rate in (0, 1)"),
    (["--reconstruct-lr", "2"], "reconstruct_lr must be a learning rate in (0, 1)"),
    (["--reconstruct-mask", "learned", "--reconstruct", "0"], "reconstruct_mask 'learned' re-selects the masks"),
    (["--reconstruct-mask", "learned", "--method", "random", "--pattern", "2:4", *FEW_STEPS], "method 'random' has none"),
    (["--reconstruct-mask", "learned"], "give reconstruct a number of steps > 0"),  # unstructured: off by default
    (["--distill=-1"], "distill must be a number of steps >= 0"),
    (["--distill-lr", "0"], "distill_lr must be a learning rate in (0, 1)"),
    (["--distill-lr", "inf"], "distill_lr must be a learning rate in (0, 1)"),
    (["--distill", "2", "--streaming"], "--distill fits the whole model end to end"),
    (["--keep-dense", "abc"], "--keep-dense takes a share of the weights"),
    (["--keep-dense", "150%"], "keep_dense must be a share of the prunable weights in [0, 1)"),
    (["--keep-dense=-0.1"], "keep_dense must be a share"),
    (["--keep-dense", "10%", "--owl", "5,0.08"], "keep_dense and owl both allocate"),
])
def test_bad_options(world, capsys, option, match, tmp_path):
    model, neighbour = world
    run_bad(capsys, ["prune", str(model), "--out", str(tmp_path / "o"), *FAST, *option], model, neighbour,
            match=match)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------- calibration / eval files
CORPORA = {
    "null.jsonl": ('{"en": "Hello.", "de": "Hallo."}\n{"en": null, "de": "Welt."}\n', "null.jsonl:2: 'en' must be a string"),
    "empty.jsonl": ('{"en": "Hello.", "de": ""}\n', "empty.jsonl:1: 'de' is empty"),
    "array.jsonl": ('{"en": "Hello.", "de": "Hallo."}\n["en", "de"]\n', "array.jsonl:2: expected a JSON object"),
    "twice.jsonl": ('{"en": "Hello.", "en": "Hi.", "de": "Hallo."}\n', "twice.jsonl:1: key 'en' appears twice"),
    "langs.jsonl": ('{"en": "Hello.", "de": "Hallo."}\n{"en": "World.", "fr": "Monde."}\n', "langs.jsonl:2: languages"),
    "cell.tsv": ("en\tde\nHello.\tHallo.\nWorld.\t \n", "cell.tsv:3: the 'de' cell is empty"),
    "repeat.tsv": ("en\tde\tde\nHello.\tHallo.\tServus.\n", "repeat.tsv:1: language 'de' is a column twice"),
    "columns.tsv": ("en\tde\nHello.\n", "columns.tsv:2: 1 columns"),
    "utf8.tsv": (b"en\tde\nHello.\tHallo.\nWorld.\tW\xff\xfelt.\n", "utf8.tsv:3: not UTF-8"),
}


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_bad_calibration_records_name_the_file_and_line(world, capsys, tmp_path, name):
    model, neighbour = world
    content, match = CORPORA[name]
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    run_bad(capsys, ["prune", str(model), "--out", str(tmp_path / "o"), "--calib", str(path), *FAST], model,
            neighbour, match=match)


def test_a_folder_corpus_keeps_its_lines_aligned(world, capsys, tmp_path):
    model, neighbour = world
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "en.txt").write_text("One.\nTwo.\n\nThree.\nFour.\n")
    (folder / "de.txt").write_text("Eins.\n\nZwei.\nDrei.\nVier.\n")  # a blank line in one file only
    run_bad(capsys, ["prune", str(model), "--out", str(tmp_path / "o"), "--calib", str(folder), *FAST], model,
            neighbour, match="de.txt:2: blank, while en.txt:2 has text")
    from tfprune.calib import load_corpus

    (folder / "de.txt").write_text("Eins.\nZwei.\n\nDrei.\nVier.\n")  # blank in every file: skipped, still aligned
    corpus = load_corpus(folder)
    assert corpus.sentences["de"] == ["Eins.", "Zwei.", "Drei.", "Vier."]
    assert corpus.sentences["en"] == ["One.", "Two.", "Three.", "Four."]


@pytest.mark.parametrize("task,record,match", [
    ("xnli", {"premise": "A.", "hypothesis": "B.", "label": True}, "'label' must be an integer"),
    ("xnli", {"premise": "A.", "hypothesis": "B.", "label": 1.0}, "'label' must be an integer"),
    ("xnli", {"premise": None, "hypothesis": "B.", "label": 1}, "'premise' must be a string"),
    ("marc2", {"text": "Good.", "stars": 4.7}, "'stars' must be an integer"),
    ("marc2", {"text": "Good.", "label": "1"}, "'label' must be an integer"),
    ("marc2", {"text": "", "label": 1}, "'text' is empty"),
])
def test_bad_eval_records_name_the_file_and_line(world, capsys, tmp_path, task, record, match):
    model, neighbour = world
    data = tmp_path / "data"
    (data / task).mkdir(parents=True)
    good = {"xnli": {"premise": "A.", "hypothesis": "B.", "label": 0}, "marc2": {"text": "Fine.", "label": 0}}[task]
    (data / task / "de.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n")
    run_bad(capsys, ["eval", str(model), "--tasks", task, "--langs", "de", "--data", str(data), "--ppl", "none"],
            model, neighbour, data, match=f"de.jsonl:2: {match}")


def test_eval_and_analyze_outputs_follow_the_same_rules(world, capsys, tmp_path):
    model, neighbour = world
    data = tmp_path / "data"
    (data / "marc2").mkdir(parents=True)
    (data / "marc2" / "de.jsonl").write_text('{"text": "Gut.", "label": 1}\n{"text": "Schlecht.", "label": 0}\n')
    eval_command = ["eval", str(model), "--tasks", "marc2", "--langs", "de", "--data", str(data), "--ppl", "none"]
    run_bad(capsys, [*eval_command, "--out", str(neighbour / "thesis.txt"), "--overwrite"], neighbour, model,
            match="not a tfprune eval report")
    run_bad(capsys, [*eval_command, "--out", str(model / "report.json")], model, match="lies inside the input")
    report = tmp_path / "report.json"
    assert main([*eval_command, "--out", str(report)]) == 0
    run_bad(capsys, [*eval_command, "--out", str(report)], report, match="exists")
    assert main([*eval_command, "--out", str(report), "--overwrite"]) == 0
    analyze = ["analyze", str(model), "--langs", "de", "--nsamples", "2", "--shots", "2", "--seqlen", "48"]
    run_bad(capsys, [*analyze, "--out", str(model)], model, match="is the input")
    run_bad(capsys, [*analyze, "--out", str(neighbour), "--overwrite"], neighbour, match="not a tfprune output")
    assert main([*analyze, "--out", str(tmp_path / "analysis")]) == 0
    assert main([*analyze, "--out", str(tmp_path / "analysis"), "--overwrite"]) == 0


# ------------------------------------------------------------------------------------ crashes → clear errors
def test_a_model_without_tokenizer_names_the_fix(world, capsys, tmp_path):
    model, neighbour = world
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model / name, bare / name)
    run_bad(capsys, ["prune", str(bare), "--out", str(tmp_path / "o"), *FAST], bare, neighbour,
            match="--tokenizer PATH")
    assert main(["prune", str(bare), "--out", str(tmp_path / "o"), "--tokenizer", str(model), *FAST]) == 0


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("damage,match", [
    ("truncate", "truncated or corrupt"),
    ("header", "not a safetensors file"),
    ("config", "config.json:1: not valid JSON"),
    ("index", "model.safetensors.index.json:1: not valid JSON"),
])
def test_corrupt_files_are_named(world, capsys, engine, damage, match, tmp_path):
    model, neighbour = world
    weights = model / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-1000])
    elif damage == "header":
        weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])
    elif damage == "config":
        (model / "config.json").write_text('{"model_type": "llama",')
    else:
        (model / "model.safetensors.index.json").write_text("{not json")
    run_bad(capsys, ["prune", str(model), "--out", str(tmp_path / "o"), *FAST, *engine], model, neighbour,
            match=match)


@pytest.mark.parametrize("content", ["", "{\"version\": 1, \"identity\": {", "[]"])
def test_a_corrupt_or_empty_manifest_is_named(world, capsys, tmp_path, content):
    model, _ = world
    out = tmp_path / "out"
    partial = partial_dir(out)
    partial.mkdir()
    (partial / MANIFEST_FILE).write_text(content)
    run_bad(capsys, ["prune", str(model), "--out", str(out), *FAST, *ENGINES[1]], model,
            match=f"delete {partial} to start over")
    assert (partial / MANIFEST_FILE).read_text() == content


# -------------------------------------------------------------------------------------- space and leftovers
@pytest.mark.parametrize("engine", ENGINES)
def test_read_only_and_full_filesystems_fail_before_any_work(world, capsys, engine, tmp_path, monkeypatch):
    model, neighbour = world
    target = tmp_path / "ro"
    target.mkdir()
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.parent == target:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    run_bad(capsys, ["prune", str(model), "--out", str(target / "out"), *FAST, *engine], model, neighbour,
            match="Read-only file system")
    monkeypatch.setattr(Path, "mkdir", real_mkdir)
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage(10**9, 10**9 - 4096, 4096))
    run_bad(capsys, ["prune", str(model), "--out", str(tmp_path / "full"), *FAST, *engine], model, neighbour,
            match="not enough space")
    assert not (tmp_path / "full").exists() and not partial_dir(tmp_path / "full").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "notes", "ro"]
