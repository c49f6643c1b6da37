"""`tfprune bench`: shapes, timing, the JSON record (every field), the table and the PNG plot, on tiny cases."""
import json

import pytest
import torch
from PIL import Image

from tfprune import decode24, decode_crossover
from tfprune.bench import (BenchConfig, LinearShape, crossover_from_ratios, format_table, model_shapes, parse_shapes,
                           preset_shapes, prune_24_, run_bench, sparse_support, summarize, time_fn, write_outputs)
from tfprune.cli import main
from tfprune.errors import TfpruneError

TINY = dict(device="cpu", shapes="64x128,128x64", tokens=(1, 8), dtypes=("bfloat16",), reps=3, warmup=1,
            e2e_hidden=64, e2e_layers=1, prefill_tokens=8, decode_tokens=2, e2e_reps=2)
LINEAR_FIELDS = {"device", "dtype", "shape", "model", "layers", "out_features", "in_features", "tokens", "status",
                 "reason", "dense", "sparse", "speedup", "max_abs_diff", "sparse_path", "sparse_status",
                 "sparse_reason"}
E2E_FIELDS = {"device", "dtype", "model", "hidden", "layers", "parameters", "batch", "sparse_layers", "phase",
              "tokens", "context", "status", "reason", "dense", "sparse", "speedup", "max_abs_logit_diff",
              "sparse_status", "sparse_reason"}
TIMING_FIELDS = {"median_ms", "stats", "samples_ms"}
STATS_FIELDS = {"median", "mean", "min", "max", "stddev", "q1", "q3", "iqr", "rounds"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def crossover_store(tmp_path, monkeypatch):
    """Crossovers that `tfprune bench` stores go to a temporary file, never the user's cache."""
    path = tmp_path / "crossover.json"
    monkeypatch.setenv(decode_crossover.ENV, str(path))
    monkeypatch.delenv("TFPRUNE_DECODE_MAX_ROWS", raising=False)
    decode_crossover.reload()
    yield path
    decode_crossover.reload()


def test_shapes():
    shapes = {s.layers: (s.out_features, s.in_features) for s in preset_shapes("llama-70b")}
    assert shapes == {("q_proj", "o_proj"): (8192, 8192), ("k_proj", "v_proj"): (1024, 8192),
                      ("gate_proj", "up_proj"): (28672, 8192), ("down_proj",): (8192, 28672)}
    assert {(s.out_features, s.in_features) for s in preset_shapes("llama-7b")} == {
        (4096, 4096), (11008, 4096), (4096, 11008)}
    from_config = {s.layers: (s.out_features, s.in_features) for s in model_shapes("builtin:llama")}
    assert from_config[("self_attn.k_proj", "self_attn.v_proj")] == (32, 64)
    assert from_config[("mlp.down_proj",)] == (64, 128)
    assert [s.name for s in parse_shapes("32x64, 64x32")] == ["custom 32x64", "custom 64x32"]
    with pytest.raises(TfpruneError, match="OUTxIN"):
        parse_shapes("32by64")
    with pytest.raises(TfpruneError, match="unknown preset"):
        preset_shapes("llama-1t")


def test_prune_24_and_timing():
    weight = torch.randn(8, 16)
    prune_24_(weight)
    assert ((weight.reshape(8, 4, 4) != 0).sum(-1) <= 2).all()
    assert not torch.signbit(weight[weight == 0]).any()  # +0.0, never -0.0
    calls = []
    samples = time_fn(lambda: calls.append(1), warmup=2, reps=5)
    assert len(samples) == 5 and len(calls) == 7 and all(s >= 0 for s in samples)
    stats = summarize([1.0, 2.0, 3.0, 10.0])
    assert set(stats) == STATS_FIELDS and stats["median"] == 2.5 and stats["rounds"] == 4


def _check_timing(part, rounds):
    assert set(part) >= TIMING_FIELDS and set(part["stats"]) == STATS_FIELDS
    assert len(part["samples_ms"]) == rounds and part["median_ms"] > 0


def test_bench_record_has_every_field_and_plot_is_png(tmp_path):
    record = run_bench(BenchConfig(**TINY))
    assert {"tool", "schema", "machine", "versions", "config", "sparse", "linear", "e2e"} <= set(record)
    assert {"torch", "triton", "transformers", "python", "cuda", "tfprune"} <= set(record["versions"])
    assert record["versions"]["torch"] == torch.__version__
    assert {"node", "machine", "cpu", "cpu_count", "torch_threads", "load_average", "gpu", "datetime"} <= set(
        record["machine"])
    assert record["config"]["tokens"] == [1, 8] and record["config"]["reps"] == 3
    available, reason = sparse_support()
    assert record["sparse"] == {"available": available, "format": "cutlass", "reason": reason}
    measured = [row for row in record["linear"] if row["status"] == "measured"]
    assert len(measured) == 4  # 2 shapes x 2 token counts x 1 dtype
    for row in record["linear"]:
        assert set(row) == LINEAR_FIELDS
    for row in measured:
        assert row["device"] == "cpu" and row["dtype"] == "bfloat16"
        _check_timing(row["dense"], 3)
        if row["sparse_status"] == "measured":
            _check_timing(row["sparse"], 3)
            assert row["speedup"] == pytest.approx(row["dense"]["median_ms"] / row["sparse"]["median_ms"])
            assert row["max_abs_diff"] < 1e-3
        else:
            assert row["sparse"] is None and row["speedup"] is None and row["sparse_reason"]
    if not torch.cuda.is_available():
        gpu = [row for row in record["linear"] if row["device"] == "cuda"]
        assert gpu and all(row["status"] == "not measured" and row["dense"] is None for row in gpu)
        assert {row["dtype"] for row in gpu} == {"float16", "bfloat16"}
    for row in record["e2e"]:
        assert set(row) == E2E_FIELDS
    e2e = [row for row in record["e2e"] if row["status"] == "measured"]
    assert [row["phase"] for row in e2e] == ["prefill", "decode"]
    for row in e2e:
        _check_timing(row["dense"], 2)
        assert row["dense"]["tokens_per_s"] == pytest.approx(row["tokens"] / (row["dense"]["median_ms"] / 1e3))
    json_path, png_path = write_outputs(record, tmp_path / "out")
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(record))
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png_path) as image:
        image.verify()
        assert image.size[0] > 500 and image.size[1] > 200
    table = format_table(record)
    assert "64x128" in table and "prefill" in table and "decode" in table
    if not torch.cuda.is_available():
        assert "GPU rows not measured" in table


def test_cli_bench(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--device", "cpu", "--shapes", "32x64", "--tokens", "2", "--reps", "2", "--warmup", "0",
                 "--no-e2e", "--dtypes", "bfloat16", "--out", str(out)]) == 0
    record = json.loads((out / "bench.json").read_text())
    assert record["e2e"] == [] and record["linear"][0]["dtype"] == "bfloat16"
    assert (out / "bench.png").is_file() and "wrote" in capsys.readouterr().out
    assert main(["bench", "--dtypes", "int3", "--out", str(out)]) == 2
    assert main(["bench", "--tokens", "1,x", "--out", str(out)]) == 2
    if not torch.cuda.is_available():
        assert main(["bench", "--device", "cuda", "--out", str(tmp_path / "other")]) == 2
        assert "no CUDA device" in capsys.readouterr().err
    assert main(["bench", "--device", "cpu", "--shapes", "32x64", "--tokens", "2", "--no-e2e", "--out", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err  # bench outputs follow tfprune.outdir's rules


def test_shared_with_benchmark_suite():
    """benchmarks/bench_inference.py builds its cases from the same functions as `tfprune bench`."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_inference.py"
    spec = importlib.util.spec_from_file_location("bench_inference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = module.linear_callable(LinearShape("custom", (), 32, 64), 4, torch.float32, "dense")
    assert fn().shape == (4, 32)


def test_crossover_from_ratios():
    assert crossover_from_ratios({1: 1.8, 2: 1.2, 4: 0.9, 8: 1.1}) == 2  # wins again at 8, but lost at 4
    assert crossover_from_ratios({1: 0.95, 2: 1.5}) == 0
    assert crossover_from_ratios({1: 2.0, 16: 1.0}) == 16
    assert crossover_from_ratios({1: 1.5, 2: float("nan")}) == 1


def test_bench_measures_and_stores_the_decode_crossover(crossover_store):
    record = run_bench(BenchConfig(**dict(TINY, e2e=False)))
    crossover = record["crossover"]
    if crossover["max_rows"] is None:  # no decode kernel on this CPU build
        assert crossover["reason"] and not crossover_store.exists()
        return
    assert crossover["device"] == decode_crossover.device_key("cpu") and crossover["against"] == "dense F.linear"
    assert [c["tokens"] for c in crossover["cases"]][:8] == [1, 2, 3, 4, 6, 8, 12, 16]
    assert len(crossover["cases"]) == 16 and all(c["speedup"] == c["other_ms"] / c["decode_ms"] for c in crossover["cases"])
    assert crossover["max_rows"] == crossover_from_ratios({int(m): r for m, r in crossover["ratios"].items()})
    assert crossover["stored"] == str(crossover_store)
    stored = json.loads(crossover_store.read_text())["devices"][crossover["device"]]
    assert stored["max_rows"] == crossover["max_rows"] and stored["against"] == "dense F.linear"
    assert decode24.max_rows("cpu") == crossover["max_rows"]  # what SparseLinear now uses on this machine
    assert f"decode crossover on {crossover['device']}" in format_table(record)
    unstored = run_bench(BenchConfig(**dict(TINY, e2e=False, linear=False, store_crossover=False, tokens=(1,))))
    assert unstored["crossover"]["stored"] is None and unstored["linear"] == []
