"""The sequential engine on every built-in family: exact sparsity, protection, detection, save/load."""
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM

import tfprune
from tfprune import PruneConfig
from tfprune.builtin import BUILTIN_FAMILIES, PLANTED_CHANNELS
from tfprune.calib import build_calibration
from tfprune.cli import _config_from_args, build_parser
from tfprune.engine import decoder_layers, find_linears, targets, weight_matrix
from tfprune.engine.calibrate import collect_block_stats
from tfprune.engine.capture import capture_layer_inputs

SMALL = dict(nsamples=8, seqlen=64, batch_size=4)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("family", BUILTIN_FAMILIES)
def test_unstructured_prune_save_and_reload(family, tiny_model, tmp_path):
    model, tokenizer = tiny_model(family)
    report = tfprune.prune(model, tokenizer, PruneConfig(sparsity=0.5, **SMALL), progress=False)
    linears = [m for block in decoder_layers(model) for m in find_linears(block).values()]
    assert len(report.layers) == len(linears) >= 4
    for module in linears:
        weight = weight_matrix(module)
        assert ((weight == 0).sum(1) == weight.shape[1] // 2).all()
    ids = torch.randint(0, len(tokenizer), (2, 12))
    expected = logits(model, ids)
    assert torch.isfinite(expected).all()
    tfprune.save_pruned(model, tokenizer, tmp_path / "out", PruneConfig(**SMALL), report)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert torch.equal(logits(reloaded, ids), expected)
    assert (tmp_path / "out" / "tfprune.json").is_file()


@pytest.mark.parametrize("family", ["llama", "gpt2", "bloom"])
@pytest.mark.parametrize("pattern,n,m", [("2:4", 2, 4), ("4:8", 4, 8)])
def test_nm_prune_keeps_exactly_n_per_group(family, pattern, n, m, tiny_model):
    model, tokenizer = tiny_model(family)
    report = tfprune.prune(model, tokenizer, PruneConfig(pattern=pattern, reconstruct=4, **SMALL), progress=False)
    assert report.sparsity == pytest.approx(1 - n / m)  # the fit (4 steps, not the default 256: time) keeps it exact
    for block in decoder_layers(model):
        for module in find_linears(block).values():
            weight = weight_matrix(module)
            assert ((weight != 0).reshape(weight.shape[0], -1, m).sum(-1) == n).all()


def test_planted_channels_are_detected_and_protected(tiny_model):
    model, tokenizer = tiny_model("llama")
    report = tfprune.prune(model, tokenizer, PruneConfig(protect="int8:6.0", sparsity=0.7, **SMALL), progress=False)
    fed_by_norms = [layer for layer in report.layers if layer.name.split(".")[-1] in {"q_proj", "k_proj", "v_proj",
                                                                                       "gate_proj", "up_proj"}]
    assert len(fed_by_norms) == 10
    for layer in fed_by_norms:
        assert sorted(layer.protected) == sorted(PLANTED_CHANNELS)
        assert sorted(c for c, _ in layer.top_channels[:3]) == sorted(PLANTED_CHANNELS)
    for block in decoder_layers(model):
        weight = weight_matrix(block.self_attn.q_proj)
        assert (weight[:, list(PLANTED_CHANNELS)] != 0).all()


def test_protection_collides_with_nm_and_is_counted(tiny_model):
    model, tokenizer = tiny_model("llama")
    report = tfprune.prune(model, tokenizer, PruneConfig(protect="topk:10%", pattern="1:4", reconstruct=0, **SMALL), progress=False)
    layer = report.layers[0]
    groups = torch.zeros(64, dtype=torch.bool)
    groups[layer.protected] = True
    expected = int((groups.reshape(-1, 4).sum(-1) > 1).sum()) * layer.shape[0]
    assert layer.violations == expected


def test_engine_statistics_and_mask_match_a_float64_reference(tiny_model):
    model, tokenizer = tiny_model("llama")
    config = PruneConfig(**SMALL)
    calib = build_calibration(None, tokenizer, config)
    q_proj = decoder_layers(model)[0].self_attn.q_proj
    seen = []
    handle = q_proj.register_forward_hook(lambda _m, args, _o: seen.append(args[0].detach().double()))
    with torch.no_grad():
        for ids, mask in calib.batches(config.batch_size):
            model(input_ids=ids, attention_mask=mask)
    handle.remove()
    tokens = torch.cat([x.reshape(-1, x.shape[-1])[mask.reshape(-1).bool()]
                        for x, (_, mask) in zip(seen, calib.batches(config.batch_size))])
    assert tokens.shape[0] == calib.tokens
    inputs = capture_layer_inputs(model, calib, "translation", config.batch_size)
    stats = collect_block_stats(decoder_layers(model)[0], 0, inputs, config.tau)["translation"]["self_attn.q_proj"]
    torch.testing.assert_close(stats.sumsq, (tokens**2).sum(0), rtol=1e-5, atol=1e-6)
    assert int(stats.n) == tokens.shape[0]
    weight = q_proj.weight.detach().double()
    score = weight.abs() * (tokens**2).sum(0).sqrt()
    k = weight.shape[1] // 2
    expected = torch.ones_like(weight, dtype=torch.bool)
    expected.scatter_(1, torch.sort(score, dim=1, stable=True).indices[:, :k], False)
    tfprune.prune(model, tokenizer, config, calib=calib, progress=False)
    assert torch.equal(q_proj.weight != 0, expected)


def test_padding_never_enters_the_statistics(tiny_model):
    model, tokenizer = tiny_model("llama")
    config = PruneConfig(**SMALL)
    calib = build_calibration(None, tokenizer, config)
    per_batch_size = {}
    for batch_size in (1, 4):
        inputs = capture_layer_inputs(model, calib, "translation", batch_size)
        stats = collect_block_stats(decoder_layers(model)[0], 0, inputs, config.tau)["translation"]
        per_batch_size[batch_size] = stats["mlp.down_proj"]
    assert int(per_batch_size[1].n) == int(per_batch_size[4].n) == calib.tokens
    torch.testing.assert_close(per_batch_size[1].sumsq, per_batch_size[4].sumsq, rtol=1e-4, atol=1e-4)


def test_contrastive_and_owl_and_random(tiny_model):
    model, tokenizer = tiny_model("llama")
    report = tfprune.prune(model, tokenizer, PruneConfig(method="contrastive", **SMALL), progress=False)
    assert report.sparsity == pytest.approx(0.5)
    model, tokenizer = tiny_model("llama")
    report = tfprune.prune(model, tokenizer, PruneConfig(owl=(5.0, 0.08), sparsity=0.6, **SMALL), progress=False)
    assert sum(report.block_sparsity) / 2 == pytest.approx(0.6)
    assert report.block_sparsity[0] != report.block_sparsity[1]
    for layer in report.layers:
        assert layer.sparsity == pytest.approx(int(layer.shape[1] * layer.target_sparsity) / layer.shape[1])
    model, tokenizer = tiny_model("llama")
    assert tfprune.prune(model, tokenizer, PruneConfig(method="random", **SMALL), progress=False).sparsity == 0.5


def test_pruning_is_reproducible(tiny_model):
    results = []
    for _ in range(2):
        model, tokenizer = tiny_model("xglm")
        tfprune.prune(model, tokenizer, PruneConfig(**SMALL), progress=False)
        results.append([weight_matrix(m).clone() for b in decoder_layers(model) for m in find_linears(b).values()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


@torch.no_grad()
def _reference_error(block, inputs, goals) -> float:
    """relative_error by hand in float64, token by token: Σ‖ΔY‖²/Σ‖Y‖² over the real tokens of every batch."""
    from tfprune.engine.capture import run_block

    errors = norms = 0.0
    for i in range(len(inputs)):
        output = run_block(block, inputs[i], 0).double()
        real = inputs[i].token_mask.reshape(output.shape[:2])
        for b, t in real.nonzero().tolist():
            errors += float(((output[b, t] - goals[i][b, t].double()) ** 2).sum())
            norms += float((goals[i][b, t].double() ** 2).sum())
    return errors / norms


def test_block_reconstruction_fits_the_dense_block_and_keeps_the_pattern(tiny_model):
    import copy

    from tfprune.engine.activations import ActivationStore
    from tfprune.engine.capture import capture_layer_inputs, run_block
    from tfprune.engine.sequential import prune_block

    model, tokenizer = tiny_model("llama")
    config = PruneConfig(pattern="2:4", reconstruct=30, reconstruct_lr=1e-3, **SMALL)
    store = ActivationStore("device", torch.device("cpu"))
    for item in capture_layer_inputs(model, build_calibration(None, tokenizer, config), "translation", 4):
        store.append(item)
    block = decoder_layers(model)[0]
    dense = copy.deepcopy(block)
    goals = [run_block(dense, store[i], 0) for i in range(len(store))]  # independent of the engine's recording
    plain = copy.deepcopy(block)
    prune_block(plain, 0, store, PruneConfig(pattern="2:4", reconstruct=0, **SMALL), 0.5, 0)  # same masks, no fit
    result = prune_block(block, 0, store, config, 0.5, 0)
    rec = result.reconstruction
    assert rec is not None and rec.steps == 30
    assert rec.error_before == pytest.approx(_reference_error(plain, store, goals), rel=1e-5)
    assert rec.error_after == pytest.approx(_reference_error(block, store, goals), rel=1e-5)
    assert rec.error_after < 0.7 * rec.error_before
    for name, target in targets(block).items():
        weight, reference = target.matrix(), targets(plain)[name].matrix()
        assert torch.equal(weight != 0, reference != 0), name  # the masks are kept exactly
        assert not torch.equal(weight, reference)  # and the kept weights moved
        assert not torch.signbit(weight[weight == 0]).any()  # +0.0
    report = tfprune.prune(*tiny_model("llama"), replace(config, distill=0), progress=False)
    assert [r["index"] for r in report.reconstruction] == [0, 1] and "block reconstruction" in report.table()


def test_reconstruction_is_the_default_for_nm_patterns_only():
    """The quality benchmark's best 2:4 (benchmarks/README.md): reconstruction on by default for N:M, off for
    unstructured and for the calibration-free baselines; an explicit number always wins."""
    assert PruneConfig(pattern="2:4").reconstruct == 256 and PruneConfig(pattern="4:8", method="ria").reconstruct == 256
    assert PruneConfig(pattern="2:4", method="sparsegpt").reconstruct == 256
    assert PruneConfig().reconstruct == 0 and PruneConfig(sparsity=0.7).reconstruct == 0
    assert PruneConfig(pattern="2:4", method="magnitude").reconstruct == 0
    assert PruneConfig(pattern="2:4", reconstruct=0).reconstruct == 0
    assert PruneConfig(sparsity=0.5, reconstruct=8).reconstruct == 8
    assert PruneConfig(**PruneConfig(pattern="2:4").to_dict()).reconstruct == 256  # a record replays as run
    args = build_parser().parse_args(["prune", "m", "--out", "o", "--pattern", "2:4"])
    assert _config_from_args(args).reconstruct == 256  # the CLI's default is the library's


def test_reconstruction_restores_every_tensor_to_its_own_dtype(tiny_model):
    """A bf16 block with a float32 buffer (rotary frequencies, fp32-kept modules): fitted in float32, then each
    tensor is cast back to its own dtype, not all to the first parameter's."""
    from tfprune.engine.activations import ActivationStore
    from tfprune.engine.capture import capture_layer_inputs, run_block
    from tfprune.engine.reconstruct import reconstruct_block_

    model, tokenizer = tiny_model("llama")
    model.to(torch.bfloat16)
    config = PruneConfig(pattern="2:4", reconstruct=0, **SMALL)
    store = ActivationStore("device", torch.device("cpu"))
    for item in capture_layer_inputs(model, build_calibration(None, tokenizer, config), "translation", 4):
        store.append(item)
    block = decoder_layers(model)[0]
    block.mlp.register_buffer("probe", torch.linspace(0, 1, 7, dtype=torch.float32))
    block.mlp.register_parameter("probe_parameter", torch.nn.Parameter(torch.linspace(0, 1, 7)))  # not fitted
    with torch.no_grad():
        for target in targets(block).values():  # every other weight pruned, as -0.0: the fit gives back +0.0
            target.matrix()[:, ::2] = -0.0
        goals = [run_block(block, store[i], 0) for i in range(len(store))]
    reconstruct_block_(block, 0, store, goals, 3, 1e-3)
    assert block.mlp.probe.dtype == torch.float32 and torch.equal(block.mlp.probe, torch.linspace(0, 1, 7))
    parameter = block.mlp.probe_parameter
    assert parameter.dtype == torch.float32 and torch.equal(parameter, torch.linspace(0, 1, 7))
    assert {p.dtype for name, p in block.named_parameters() if name != "mlp.probe_parameter"} == {torch.bfloat16}
    for target in targets(block).values():
        weight = target.matrix()
        assert bool((weight[:, ::2] == 0).all()) and not bool(torch.signbit(weight[:, ::2]).any())


def test_a_diverged_reconstruction_is_an_error_not_a_block(tiny_model):
    """A goal with a NaN makes every fitted weight NaN: refused with the way out, not written."""
    from tfprune.engine.activations import ActivationStore
    from tfprune.engine.capture import capture_layer_inputs, run_block
    from tfprune.engine.reconstruct import reconstruct_block_
    from tfprune.errors import NonFiniteActivationError

    model, tokenizer = tiny_model("llama")
    config = PruneConfig(pattern="2:4", reconstruct=0, **SMALL)
    store = ActivationStore("device", torch.device("cpu"))
    for item in capture_layer_inputs(model, build_calibration(None, tokenizer, config), "translation", 4):
        store.append(item)
    block = decoder_layers(model)[0]
    with torch.no_grad():
        goals = [run_block(block, store[i], 0) for i in range(len(store))]
    goals[0][0, 1, 0] = float("nan")
    with pytest.raises(NonFiniteActivationError, match="block 0: reconstruction diverged .* --reconstruct-lr"):
        reconstruct_block_(block, 0, store, goals, 2, 1e-3)


def test_learned_masks_in_a_bf16_model_come_back_bf16_and_exactly_2_4(tiny_model):
    """A bf16 model with learned masks: fitted in float32, every matrix comes back bf16, finite, with at most 2
    non-zeros in every group of 4 inputs and its pruned weights +0.0, and some masks changed."""
    model, tokenizer = tiny_model("llama")
    model.to(torch.bfloat16)
    config = PruneConfig(pattern="2:4", reconstruct=6, reconstruct_lr=3e-2, reconstruct_mask="learned", distill=0,
                         **SMALL)  # no distillation: its reset of the pruned weights would hide the fit's
    report = tfprune.prune(model, tokenizer, config, progress=False)
    assert any(r["mask_changed"] > 0 for r in report.reconstruction)
    for block in decoder_layers(model):
        assert {p.dtype for p in block.parameters()} == {torch.bfloat16}
        for name, target in targets(block).items():
            weight = target.matrix()
            assert torch.isfinite(weight).all(), name
            assert ((weight != 0).reshape(weight.shape[0], -1, 4).sum(-1) <= 2).all(), name
            assert not torch.signbit(weight[weight == 0]).any(), name


class _StraightThroughMask(torch.nn.Module):
    """Reference parametrization of a learned mask: the forward weight is W ⊙ M(W), M keeping the best scores
    (tfprune.scores.scores_ref of `method`) by torch.topk, 2 of every 4 inputs (`nm`) or the best
    in − int(in · sparsity) of a row, and the gradient passes to every W_ij unchanged."""

    def __init__(self, method: str, norm: torch.Tensor, nm: bool, sparsity: float):
        super().__init__()
        self.method, self.norm, self.nm, self.sparsity = method, norm.float(), nm, sparsity

    def keep(self, weight: torch.Tensor) -> torch.Tensor:
        from tfprune.scores import scores_ref

        score = scores_ref(weight.detach(), self.method, self.norm)
        if self.nm:
            score = score.reshape(weight.shape[0], -1, 4)
            keep = torch.zeros_like(score, dtype=torch.bool).scatter_(-1, score.topk(2, dim=-1).indices, True)
            return keep.reshape(weight.shape)
        kept = weight.shape[1] - int(weight.shape[1] * self.sparsity)
        return torch.zeros_like(score, dtype=torch.bool).scatter_(1, score.topk(kept, dim=1).indices, True)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight - (weight * ~self.keep(weight)).detach()


def _straight_through_reference(block, store, goals, masks, steps, lr):
    """The learned-mask reconstruction written with torch's parametrizations and torch.optim.Adam (float32),
    from the dense block (without an OBS update the kept weights are the dense ones, so the latent weights start
    as the dense weights): the block runs on their masked values, Adam updates every latent weight and the norms;
    the result is the masked latent weights. masks: {target name: _StraightThroughMask}. Returns the block."""
    from torch.nn.utils import parametrize

    from tfprune.engine.capture import run_block

    block.float().requires_grad_(False)
    for name, target in targets(block).items():
        parametrize.register_parametrization(target.module, "weight", masks[name])
    latents = [target.module.parametrizations.weight.original for target in targets(block).values()]
    norm_weights = [m.weight for m in block.modules() if type(m).__name__.endswith("RMSNorm")]
    for p in latents + norm_weights:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(latents + norm_weights, lr=lr, foreach=False)
    for step in range(steps):
        item = store[step % len(store)]
        real = item.token_mask.reshape(item.hidden.shape[:2])
        output, goal = run_block(block, item, 0)[real], goals[step % len(store)][real]
        loss = (output - goal).square().sum() / goal.square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        for target in targets(block).values():
            parametrize.remove_parametrizations(target.module, "weight", leave_parametrized=True)
    return block


@pytest.mark.parametrize("method, pattern", [("wanda", "2:4"), ("ria", "2:4"), ("magnitude", "unstructured")])
def test_learned_masks_match_a_straight_through_reference(tiny_model, method, pattern):
    """reconstruct_mask='learned' (2:4 and per-row 50 %, three scores): the fitted weights and their masks
    equal a parametrization-based straight-through fit's from the dense block, some masks change, and the
    pattern stays exact."""
    import copy

    from tfprune.engine.activations import ActivationStore
    from tfprune.engine.capture import run_block
    from tfprune.engine.sequential import prune_block

    model, tokenizer = tiny_model("llama")
    options = dict(method=method, pattern=pattern, reconstruct_lr=3e-3, **SMALL)
    config = PruneConfig(**options, reconstruct=12, reconstruct_mask="learned")
    store = ActivationStore("device", torch.device("cpu"))
    for item in capture_layer_inputs(model, build_calibration(None, tokenizer, config), "translation", 4):
        store.append(item)
    block = decoder_layers(model)[0]
    dense = copy.deepcopy(block)
    with torch.no_grad():
        goals = [run_block(dense, store[i], 0) for i in range(len(store))]
    stats = collect_block_stats(copy.deepcopy(dense), 0, store, config.tau)["translation"]
    one_shot = copy.deepcopy(block)
    prune_block(one_shot, 0, store, PruneConfig(**options, reconstruct=0), 0.5, 0)
    masks = {name: _StraightThroughMask(method, s.norm, pattern == "2:4", 0.5) for name, s in stats.items()}
    reference = _straight_through_reference(copy.deepcopy(dense), store, goals, masks, 12, 3e-3)
    result = prune_block(block, 0, store, config, 0.5, 0)
    flips = total = 0
    for name, target in targets(block).items():
        weight, expected = target.matrix(), targets(reference)[name].matrix()
        assert torch.equal(weight != 0, expected != 0), name
        torch.testing.assert_close(weight, expected, rtol=1e-4, atol=1e-6)
        if pattern == "2:4":
            assert ((weight != 0).reshape(weight.shape[0], -1, 4).sum(-1) == 2).all(), name
        else:
            assert ((weight == 0).sum(1) == weight.shape[1] // 2).all(), name
        assert not torch.signbit(weight[weight == 0]).any()
        first = targets(one_shot)[name].matrix() != 0
        flips, total = flips + int(((weight != 0) != first).sum()), total + first.numel()
    assert flips > 0
    assert result.reconstruction.mask_changed == pytest.approx(flips / total)


def test_learned_masks_keep_protected_channels_dense_matrices_and_per_row_counts(tiny_model):
    """Per-row 50 % with protected channels and one matrix the plan keeps dense: a high learning rate moves many
    masks, yet every pruned row keeps exactly half its weights, every protected channel is kept in every row, and
    the dense matrix has no zero; with OWL each block keeps its own sparsity; 'sparsegpt' learns its masks by
    Wanda's score and stays exact 2:4."""
    from tfprune.engine.activations import ActivationStore
    from tfprune.engine.layer import mask_selection
    from tfprune.engine.sequential import prune_block

    model, tokenizer = tiny_model("llama")
    config = PruneConfig(sparsity=0.5, protect="topk:10%", reconstruct=10, reconstruct_lr=3e-2,
                         reconstruct_mask="learned", **SMALL)
    store = ActivationStore("device", torch.device("cpu"))
    for item in capture_layer_inputs(model, build_calibration(None, tokenizer, config), "translation", 4):
        store.append(item)
    block = decoder_layers(model)[0]
    result = prune_block(block, 0, store, config, 0.5, 0, dense={"mlp.down_proj"})
    assert result.reconstruction.mask_changed > 0.01
    for report in result.reports:
        weight = targets(block)[report.name.split(".", 1)[1]].matrix()
        if report.name.endswith("down_proj"):
            assert (weight != 0).all()
            continue
        assert ((weight == 0).sum(1) == weight.shape[1] // 2).all(), report.name
        assert report.protected and (weight[:, report.protected] != 0).all(), report.name
    model, tokenizer = tiny_model("llama")
    owl = PruneConfig(sparsity=0.6, owl=(5.0, 0.2), reconstruct=4, reconstruct_lr=3e-2, reconstruct_mask="learned",
                      **SMALL)
    report = tfprune.prune(model, tokenizer, owl, progress=False)
    assert len(set(report.block_sparsity)) == 2
    for block, sparsity in zip(decoder_layers(model), report.block_sparsity):
        for target in targets(block).values():
            weight = target.matrix()
            assert ((weight == 0).sum(1) == int(weight.shape[1] * sparsity)).all(), target.name
    sparsegpt = PruneConfig(method="sparsegpt", pattern="2:4", reconstruct=6, reconstruct_lr=3e-2,
                            reconstruct_mask="learned", **SMALL)
    stats = collect_block_stats(decoder_layers(model)[0], 0, store, config.tau)
    assert mask_selection({"translation": stats["translation"]["self_attn.q_proj"]}, sparsegpt, 0.5, 0).method == "wanda"
    model, tokenizer = tiny_model("qwen2")
    report = tfprune.prune(model, tokenizer, sparsegpt, progress=False)
    assert all(r["mask_changed"] > 0 for r in report.reconstruction)
    for block in decoder_layers(model):
        for target in targets(block).values():
            weight = target.matrix()
            assert ((weight != 0).reshape(weight.shape[0], -1, 4).sum(-1) == 2).all(), target.name


def test_learned_masks_select_each_fused_expert_by_its_own_statistics():
    """A fused [E, out, in] experts parameter: each expert's mask comes from its own latent weights and its own
    channel norms (here deliberately different per expert), by the reference scores and N:M mask."""
    from architectures import build

    from tfprune.engine.layer import MaskSelection
    from tfprune.engine.reconstruct import _LearnedMasks
    from tfprune.masks import nm_mask_ref
    from tfprune.scores import scores_ref

    model, _ = build("mixtral")
    block = decoder_layers(model)[0].float()
    experts = {name: t for name, t in targets(block).items() if t.expert is not None}
    assert len({id(getattr(t.module, t.param)) for t in experts.values()}) < len(experts)  # fused
    norms = {name: torch.rand(t.matrix().shape[1]) * 10 ** (i % 3) for i, (name, t) in enumerate(experts.items())}
    selections = {name: MaskSelection("wanda", 0.5, (2, 4), norm=norms[name]) for name in experts}
    learned = _LearnedMasks(block, selections, {name: t.matrix().clone() for name, t in experts.items()})
    for latent in learned.latents:
        latent.data.normal_()
    learned.mask_()
    for (param, group), latent in zip(learned.groups, learned.latents):
        for target, _ in group:
            expected = nm_mask_ref(scores_ref(target.view(latent.detach()), "wanda", norms[target.name]), 2, 4)
            assert torch.equal(target.matrix() != 0, expected), target.name
            assert torch.equal(target.matrix()[expected], target.view(latent.detach())[expected])
