"""Sensitivity-aware allocation (keep_dense): the greedy budget, the measured costs against a plain transformers
forward with a float64 Wanda mask and on the real translation tokens only, both engines (same bytes, resumable),
both output formats (bad --keep-dense values: test_bad_input.py)."""
import copy
import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

import tfprune
from tfprune import PruneConfig
from tfprune.builtin import build_model
from tfprune.calib import build_calibration
from tfprune.cli import main
from tfprune.engine import plan as plan_module
from tfprune.engine import sequential
from tfprune.engine.capture import capture_layer_inputs
from tfprune.engine.discovery import decoder_layers, targets
from tfprune.engine.layer import KEPT_DENSE_NOTE
from tfprune.engine.plan import BlockMeasure, LayerPlan, dense_allocation, make_plan, measure_block
from tfprune.engine.streaming import prune_streaming
from tfprune.models import load_model

TINY = dict(nsamples=4, seqlen=32, batch_size=2, distill=0)  # every test here that prunes sets reconstruct
CLI_TINY = ["--nsamples", "4", "--seqlen", "32", "--batch-size", "2", "--quiet", "--distill", "0"]


def test_dense_allocation_is_a_greedy_knapsack_by_cost_per_weight():
    costs = {"a": (8.0, 40), "b": (3.0, 10), "c": (2.0, 20), "d": (0.0, 5), "e": (1.0, 25)}
    # per weight: b 0.3, a 0.2, c 0.1, e 0.04, d 0; total 100 weights
    assert dense_allocation(costs, 0.5) == ["a", "b"]        # b (10), a (50 used); c would make 70
    assert dense_allocation(costs, 0.35) == ["b", "c"]       # b; a is too large for what is left; c fits (30)
    assert dense_allocation(costs, 0.09) == []               # b alone is 10 % of the weights
    assert dense_allocation(costs, 0.999) == ["a", "b", "c", "e"]  # d costs nothing: never kept
    assert dense_allocation({"x": (1.0, 10), "y": (1.0, 10)}, 0.5) == ["x"]  # ties: by key
    assert dense_allocation(costs, 0.0) == []


def test_the_plan_keeps_each_block_s_own_matrices():
    measures = [BlockMeasure(costs={"a": (1.0, 10), "b": (5.0, 10)}), BlockMeasure(costs={"a": (9.0, 10), "b": (0.0, 10)})]
    plan = make_plan(measures, PruneConfig(pattern="2:4", keep_dense=0.5))
    assert plan.dense == [["b"], ["a"]] and plan.kept() == ["0.b", "1.a"] and plan.sparsities == [0.5, 0.5]
    assert LayerPlan.from_dict(plan.to_dict()) == plan


def test_a_kept_linear_releases_its_share_of_a_hessian():
    from tfprune.sparsegpt import HessianCollector

    collector = HessianCollector()
    shared, alone = torch.randn(6, 4), torch.randn(6, 4)
    real = torch.ones(6, dtype=torch.bool)
    collector.new_batch()
    for name, inp in (("q", shared), ("k", shared), ("v", shared), ("o", alone)):
        collector.add(name, inp, inp, real)
    collector.discard("o")
    assert set(collector.hessians) == {"q"}
    collector.discard("q")  # the owner of the shared H: k and v still take it
    assert set(collector.hessians) == {"q"}
    collector.pop_factor("k")
    collector.discard("v")  # the last one left: the factor goes too
    assert not collector.hessians and not collector._factors


def wanda_24_float64(weight: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """Reference: the 2:4 mask keeping, in every group of 4 inputs, the two largest |W|·‖X‖₂ (float64)."""
    score = weight.double().abs() * norm.double()
    groups = score.reshape(weight.shape[0], -1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(2, dim=-1).indices, True)
    return keep.reshape(weight.shape)


@torch.no_grad()
def block_outputs(model, ids, index):
    """The output hidden states [B, T, H] of decoder block `index` in a plain forward of `model`."""
    seen = {}
    hook = decoder_layers(model)[index].register_forward_hook(
        lambda _m, _a, out: seen.setdefault("y", out[0] if isinstance(out, tuple) else out))
    try:
        model(input_ids=ids)
    finally:
        hook.remove()
    return seen["y"]


@torch.no_grad()
def test_costs_match_a_plain_forward_with_one_matrix_pruned():
    model, _ = build_model("llama", layers=2)
    ids = torch.randint(3, model.config.vocab_size, (4, 24))
    config = PruneConfig(pattern="2:4", keep_dense=0.3, nsamples=4, seqlen=24, batch_size=2)
    inputs = list(capture_layer_inputs(model, build_calibration(ids, None, config), "translation", 2))
    norms = {}
    for index in (0, 1):
        block = decoder_layers(model)[index]
        hooks = [target.module.register_forward_hook(
            lambda _m, args, _o, name=name: norms.__setitem__(
                name, norms.get(name, 0) + args[0].double().reshape(-1, args[0].shape[-1]).square().sum(0)))
            for name, target in targets(block).items()]
        dense_y = block_outputs(model, ids, index).double()
        for hook in hooks:
            hook.remove()
        measured = measure_block(block, index, inputs, config).costs
        assert set(measured) == set(targets(block))
        for name, target in targets(block).items():
            pruned = copy.deepcopy(model)
            weight = targets(decoder_layers(pruned)[index])[name].matrix()
            weight.mul_(wanda_24_float64(weight, norms[name].sqrt()))
            error = (block_outputs(pruned, ids, index).double() - dense_y).square().sum()
            expected = float(error / dense_y.square().sum())
            assert measured[name][0] == pytest.approx(expected, rel=1e-4), (index, name)
            assert measured[name][1] == weight.numel()
        norms.clear()
        # the next block's inputs: the dense block's outputs, from the plain forward (2 prompts per batch)
        inputs = [replace(item, hidden=dense_y[2 * i:2 * i + 2].to(item.hidden.dtype)) for i, item in enumerate(inputs)]


@torch.no_grad()
def test_costs_count_the_real_translation_tokens_only():
    """Padding (its hidden states made huge) and contrast-stream batches (method 'contrastive') change no cost."""
    from tfprune.calib.prompts import CalibrationSet

    model, _ = build_model("llama", layers=1)
    config = PruneConfig(pattern="2:4", keep_dense=0.3, nsamples=4, seqlen=24, batch_size=2)
    ids = torch.randint(3, model.config.vocab_size, (4, 24))
    mask = torch.ones_like(ids)
    mask[1, 15:], mask[3, 7:] = 0, 0  # right-padded rows
    inputs = list(capture_layer_inputs(model, CalibrationSet(ids, mask), "translation", 2))
    block = decoder_layers(model)[0]
    costs = measure_block(block, 0, inputs, config).costs
    assert all(cost > 0 for cost, _ in costs.values())
    noisy = []
    for item in inputs:
        hidden = item.hidden.clone()
        hidden[~item.token_mask.reshape(hidden.shape[:2])] = 1e4
        noisy.append(replace(item, hidden=hidden))
    contrast = list(capture_layer_inputs(model, CalibrationSet(ids.flip(0), torch.ones_like(ids)), "contrast", 2))
    for other in (noisy, noisy + contrast):
        measured = measure_block(block, 0, other, config).costs
        assert measured.keys() == costs.keys()
        for name in costs:
            assert measured[name][0] == pytest.approx(costs[name][0], rel=1e-5), name


def save_checkpoint(folder, family="llama", **options):
    model, tokenizer = build_model(family, **options)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def streamed_tensors(folder):
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    tensors = {}
    for file in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(folder / file))
    return tensors


@pytest.mark.parametrize("reconstruct", [0, 3])
def test_kept_matrices_stay_dense_the_rest_is_24_and_both_engines_agree(tmp_path, monkeypatch, interrupt_streaming,
                                                                       reconstruct):
    checkpoint = save_checkpoint(tmp_path / "ckpt", layers=3)
    config = PruneConfig(pattern="2:4", keep_dense=0.25, reconstruct=reconstruct, reconstruct_lr=1e-3, **TINY)
    model, tokenizer = load_model(str(checkpoint))
    original = {name: p.clone() for name, p in model.named_parameters()}
    report = tfprune.prune(model, tokenizer, config, progress=False)
    kept = set(report.kept_dense)
    layers = {layer.name: layer for layer in report.layers}
    assert kept and kept < set(layers)
    assert sum(layers[n].shape[0] * layers[n].shape[1] for n in kept) <= 0.25 * sum(
        layer.shape[0] * layer.shape[1] for layer in layers.values())
    for name, layer in layers.items():
        index, _, local = name.partition(".")
        weight = targets(decoder_layers(model)[int(index)])[local].matrix()
        if name in kept:
            assert layer.note == KEPT_DENSE_NOTE and layer.target_sparsity == 0 and layer.sparsity == 0
            if not reconstruct:
                assert torch.equal(weight, original[f"model.layers.{index}.{local}.weight"])
        else:
            groups = (weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1)
            assert (groups <= 2).all() and layer.sparsity == pytest.approx(0.5)
    assert f"kept dense by sensitivity: {len(kept)} matrices" in report.table()

    measured = []
    monkeypatch.setattr(sequential, "measure_block",
                        lambda *args: measured.append(args[1]) or plan_module.measure_block(*args))
    interrupt_streaming(1)
    with pytest.raises(KeyboardInterrupt):
        prune_streaming(str(checkpoint), tmp_path / "out", config, progress=False, shard_size="90KB")
    interrupt_streaming(None)
    streamed_report, summary = prune_streaming(str(checkpoint), tmp_path / "out", config, progress=False,
                                               shard_size="90KB")
    assert measured == [0, 1, 2] and summary.resumed_layers == 1  # the resumed run took the plan from the manifest
    assert streamed_report.kept_dense == report.kept_dense
    expected = model.state_dict()
    for name, tensor in streamed_tensors(tmp_path / "out").items():
        assert torch.equal(tensor, expected[name]), name


def test_kept_matrices_with_the_obs_update_and_sparsegpt():
    for options in (dict(update="obs"), dict(method="sparsegpt")):
        model, tokenizer = build_model("llama", layers=2)
        original = {name: p.clone() for name, p in model.named_parameters()}
        report = tfprune.prune(model, tokenizer, PruneConfig(pattern="2:4", keep_dense=0.3, reconstruct=0, **options,
                                                             **TINY), progress=False)
        assert report.kept_dense
        for name in report.kept_dense:
            key = f"model.layers.{name}.weight"
            assert torch.equal(model.get_parameter(key), original[key])


def test_compressed_tensors_packs_the_pruned_and_leaves_the_kept_dense(tmp_path, capsys):
    from tfprune.sparse import SparseLinear, from_pretrained

    checkpoint = save_checkpoint(tmp_path / "ckpt", layers=2)
    out = tmp_path / "packed"
    assert main(["prune", str(checkpoint), "--out", str(out), "--pattern", "2:4", "--keep-dense", "25%",
                 "--reconstruct", "0", "--format", "compressed-tensors", "--no-streaming", *CLI_TINY]) == 0
    kept = json.loads((out / "tfprune.json").read_text())["report"]["kept_dense"]
    assert kept
    ignore = json.loads((out / "config.json").read_text())["quantization_config"]["sparsity_config"]["ignore"]
    assert {f"model.layers.{name}" for name in kept} <= set(ignore)
    model = from_pretrained(out)
    for name in kept:
        module = model.get_submodule(f"model.layers.{name}")
        assert type(module) is torch.nn.Linear
    assert any(isinstance(m, SparseLinear) for m in model.modules())
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0 and "keep dense 0.25" in capsys.readouterr().out

    streamed = tmp_path / "streamed"  # the streaming engine writes the same tensors and config
    assert main(["prune", str(checkpoint), "--out", str(streamed), "--pattern", "2:4", "--keep-dense", "25%",
                 "--reconstruct", "0", "--format", "compressed-tensors", "--streaming", *CLI_TINY]) == 0
    index = json.loads((streamed / "model.safetensors.index.json").read_text())["weight_map"]
    tensors = {name: tensor for file in set(index.values()) for name, tensor in load_file(streamed / file).items()}
    expected = load_file(out / "model.safetensors")
    assert set(tensors) == set(expected) and all(torch.equal(tensors[k], expected[k]) for k in expected)
    assert json.loads((streamed / "config.json").read_text())["quantization_config"]["sparsity_config"]["ignore"] == ignore
