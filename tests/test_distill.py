"""End-to-end distillation after pruning (tfprune.engine.distill) against independent references: the chunked
KL and its gradient against float64 autograd over whole logits, the dense targets against a plain transformers
forward's logits, and the fit against a plain loop (torch.optim.Adam over the model's own `.logits`, the dense
model kept as the teacher)."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

import tfprune
from tfprune import PruneConfig
from tfprune.config import DEFAULT_DISTILL_STEPS
from tfprune.engine import distill
from tfprune.engine.discovery import decoder_layers, targets
from tfprune.engine.fitting import norm_modules
from tfprune.errors import ConfigError

from architectures import build

SMALL = dict(nsamples=8, seqlen=48, batch_size=4, reconstruct=0)


def padded_texts() -> list[str]:
    """8 calibration texts of 1 to 8 sentences: at seqlen 48 the short ones are padded in their batches."""
    english = tfprune.calib.builtin_corpus().sentences["en"]
    return [" ".join(english[i:i + k]) for i, k in enumerate((1, 3, 8, 2, 5, 1, 8, 2))]


def calibration(tokenizer):
    calib = tfprune.calib.build_calibration(padded_texts(), tokenizer, PruneConfig(**SMALL))
    assert bool((calib.attention_mask == 0).any()) and bool((calib.attention_mask.sum(1) == 48).any())
    return calib


class _Head:
    """A stand-in for a model's output head: get_output_embeddings(), config and a base model."""

    def __init__(self, linear, cap):
        self.linear, self.config = linear, type("C", (), {"final_logit_softcapping": cap})()
        self.base_model = object()

    def get_output_embeddings(self):
        return self.linear


@pytest.mark.parametrize("cap", [None, 2.5])
def test_chunked_kl_and_its_gradient_match_float64_autograd(monkeypatch, cap):
    torch.manual_seed(3)
    n, hidden, vocab = 37, 24, 101
    linear = torch.nn.Linear(hidden, vocab, bias=False)
    linear.weight.requires_grad_(False)
    head = distill.OutputHead(_Head(linear, cap))
    monkeypatch.setattr(distill, "CHUNK_VALUES", 5 * vocab)  # chunks of 5 tokens: 8 chunks, the last of 2
    student, teacher = torch.randn(n, hidden) * 3, torch.randn(n, hidden) * 3
    student[4] = teacher[4]  # a token with KL 0
    kl, grad = distill.kl_divergence(head, student, teacher)
    assert distill.kl_divergence(head, student, teacher, gradient=False) == (kl, None)

    def logits(h):
        z = h @ linear.weight.double().T
        return z if cap is None else torch.tanh(z / cap) * cap

    leaf = student.double().requires_grad_(True)
    reference = F.kl_div(torch.log_softmax(logits(leaf), -1), torch.log_softmax(logits(teacher.double()), -1),
                         log_target=True, reduction="sum")
    reference.backward()
    assert kl == pytest.approx(float(reference.detach()), rel=1e-5)
    assert grad.dtype == torch.float32 and grad.shape == (n, hidden)
    torch.testing.assert_close(grad.double(), leaf.grad, rtol=1e-4, atol=1e-6)
    assert float(grad[4].abs().max()) < 1e-5  # KL 0 at its minimum: no gradient
    assert not linear.weight.requires_grad and linear.weight.grad is None


@pytest.mark.parametrize("name", ["gemma2", "gemma3", "qwen3"])
def test_dense_targets_through_the_head_are_the_models_logits(name):
    """Padded batches: at every real token, head(final hidden state) equals a plain forward's logits (Gemma 2's
    final soft-capping included)."""
    model, tokenizer = build(name, layers=2)
    calib = calibration(tokenizer)
    states = distill.dense_final_states(model, calib, 4)
    head = distill.OutputHead(model)
    for (ids, mask), state in zip(calib.batches(4), states):
        with torch.no_grad():
            expected = model(input_ids=ids, attention_mask=mask).logits
            real = mask.bool()
            torch.testing.assert_close(head(state[real]), expected[real].float(), rtol=1e-5, atol=1e-5)
    assert (name == "gemma2") == bool(head.cap)


def _kept_weight_names(model) -> list[str]:
    """Full names of every decoder block's prunable matrices and normalization weights."""
    names = {id(module): name for name, module in model.named_modules()}
    return [f"{names[id(block)]}.{name}" for block in decoder_layers(model)
            for name in [t.parameter_name for t in targets(block).values()]
            + [f"{n}.weight" for n in norm_modules(block)]]


def _reference_distill(pruned, dense, calib, steps, lr, batch_size):
    """The fit written plainly: the teacher's and the student's `.logits` from whole forwards, the KL of each
    batch's real tokens by F.kl_div, torch.optim.Adam (not fused) on the kept weights and the norms, pruned
    weights' gradients zeroed, the learning rate set by hand on the cosine."""
    params = dict(pruned.named_parameters())
    names = _kept_weight_names(pruned)
    trained = [params[n] for n in names]
    keeps = [p.detach() != 0 if "norm" not in n else torch.ones_like(p, dtype=torch.bool)
             for n, p in zip(names, trained)]
    for p in pruned.parameters():
        p.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(trained, lr=lr)
    batches = list(calib.batches(batch_size))
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        ids, mask = batches[step % len(batches)]
        real = mask.bool()
        with torch.no_grad():
            target = dense(input_ids=ids, attention_mask=mask).logits[real]
        logits = pruned(input_ids=ids, attention_mask=mask).logits[real]
        loss = F.kl_div(torch.log_softmax(logits, -1), torch.log_softmax(target, -1), log_target=True,
                        reduction="sum") / int(real.sum())
        optimizer.zero_grad()
        loss.backward()
        for p, keep in zip(trained, keeps):
            p.grad.masked_fill_(~keep, 0.0)
        optimizer.step()
    return {n: params[n].detach() for n in names}


@pytest.mark.parametrize("name", ["gemma3", "gemma2"])
def test_distillation_matches_a_plain_adam_loop_on_the_models_logits(name, monkeypatch):
    monkeypatch.setattr(distill, "CHUNK_VALUES", 7 * 1024)  # several chunks per batch
    dense, tokenizer = build(name, layers=2)
    config = PruneConfig(pattern="2:4", distill=0, **SMALL)  # one-shot: no distillation
    calib = calibration(tokenizer)
    one_shot = copy.deepcopy(dense)
    tfprune.prune(one_shot, tokenizer, config, calib=calib, progress=False)
    one_shot_start = copy.deepcopy(one_shot)
    fitted = copy.deepcopy(dense)
    report = tfprune.prune(fitted, tokenizer, PruneConfig(pattern="2:4", distill=5, distill_lr=3e-3, **SMALL),
                           calib=calib, progress=False)
    expected = _reference_distill(one_shot, dense, calib, 5, 3e-3, SMALL["batch_size"])
    params, start = dict(fitted.named_parameters()), dict(one_shot_start.named_parameters())
    for key, value in expected.items():
        ours, theirs = (params[key] - start[key]).detach(), (value - start[key]).detach()  # the fit's update
        # Adam divides by sqrt(v): a weight whose gradient is ~0 moves by float noise; compare whole updates
        assert float(theirs.norm()) > 0 and float((ours - theirs).norm() / theirs.norm()) < 1e-4, key
        assert torch.equal(params[key] != 0, start[key] != 0) or "norm" in key, key  # the masks did not move
        assert not bool(torch.signbit(params[key][params[key] == 0]).any()), key  # +0.0
    for key, value in dict(fitted.named_parameters()).items():  # embeddings, LM head, final norm: untouched
        if key not in expected:
            assert torch.equal(value, dict(dense.named_parameters())[key]), key
    assert fitted.get_output_embeddings().weight is fitted.get_input_embeddings().weight
    d = report.distillation
    assert d["steps"] == 5 and d["kl_after"] < d["kl_before"] and "distillation: 5 steps" in report.table()


def freeze_every_other_parameter(model) -> dict[str, bool]:
    """requires_grad off for every other parameter (a partly frozen model: a fit must give back these flags,
    not all True); returns the flags by name."""
    for i, p in enumerate(model.parameters()):
        p.requires_grad_(i % 2 == 0)
    return {name: p.requires_grad for name, p in model.named_parameters()}


def test_distillation_keeps_the_pattern_and_every_dtype_in_a_bf16_model(tiny_model):
    model, tokenizer = tiny_model("llama")
    model.to(torch.bfloat16)
    buffers = {name: b.dtype for name, b in model.named_buffers()}
    flags = freeze_every_other_parameter(model)
    calib = calibration(tokenizer)
    states = distill.dense_final_states(model, calib, 4)
    tfprune.prune(model, tokenizer, PruneConfig(pattern="2:4", distill=0, **SMALL), calib=calib, progress=False)
    with torch.no_grad():
        for block in decoder_layers(model):  # -0.0 at every pruned weight: the fit must give back +0.0
            for target in targets(block).values():
                weight = target.matrix()
                weight[weight == 0] = -0.0
    one_shot = copy.deepcopy(model)
    result = distill.distill_(model, calib, states, 4, 1e-3, 4)
    fitted, start = dict(model.named_parameters()), dict(one_shot.named_parameters())
    assert all(not torch.equal(fitted[n], start[n]) for n in fitted if ".layers." in n)  # the fit survived the cast
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {name: b.dtype for name, b in model.named_buffers()} == buffers
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    for block in decoder_layers(model):
        for target in targets(block).values():
            weight = target.matrix()
            groups = (weight != 0).reshape(weight.shape[0], -1, 4).sum(-1)
            assert bool((groups == 2).all())
            assert not bool(torch.signbit(weight[weight == 0]).any())  # +0.0
    assert math.isfinite(result.kl_before) and math.isfinite(result.kl_after)


def test_distillation_fits_fused_experts_and_kept_dense_matrices():
    """Mixtral's fused experts [E, out, in] (one parameter, every expert's mask kept) and a matrix the layer plan
    keeps dense (fitted whole)."""
    model, tokenizer = build("mixtral", layers=2)
    dense = copy.deepcopy(model)
    report = tfprune.prune(model, tokenizer, PruneConfig(pattern="2:4", keep_dense=0.1, distill=3, distill_lr=1e-3,
                                                         **{**SMALL, "batch_size": 1}), progress=False)
    assert report.kept_dense
    before = dict(dense.named_parameters())
    for index, block in enumerate(decoder_layers(model)):
        for name, target in targets(block).items():
            weight = target.matrix()
            original = target.view(before[f"model.layers.{index}.{target.parameter_name}"])
            if f"{index}.{name}" in report.kept_dense:
                assert bool((weight != 0).all()) and not torch.equal(weight, original)
            else:
                assert bool(((weight != 0).reshape(weight.shape[0], -1, 4).sum(-1) == 2).all())
                kept = weight != 0
                assert not torch.equal(weight[kept], original[kept]), name  # fitted (the experts: by their tokens)


def test_a_model_whose_logits_are_not_its_head_is_refused_before_pruning(tiny_model):
    model, tokenizer = tiny_model("llama")
    model.config.final_logit_softcapping = 1.0  # Llama's forward ignores it: the head would not be the logits
    before = {name: p.clone() for name, p in model.named_parameters()}
    with pytest.raises(ConfigError, match="logits are not its LM head"):
        tfprune.prune(model, tokenizer, PruneConfig(pattern="2:4", distill=2, **SMALL), progress=False)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_distillation_is_recorded_in_the_saved_output(tiny_model, tmp_path):
    import json

    model, tokenizer = tiny_model("gpt2")
    config = PruneConfig(pattern="2:4", distill=2, **SMALL)
    report = tfprune.prune(model, tokenizer, config, progress=False)
    tfprune.save_pruned(model, tokenizer, tmp_path / "out", config, report)
    record = json.loads((tmp_path / "out" / "tfprune.json").read_text())
    assert record["config"]["distill"] == 2 and record["report"]["distillation"]["steps"] == 2


def test_a_failed_fit_gives_the_model_back_in_its_dtypes_and_a_diverged_one_is_an_error(tiny_model, monkeypatch):
    model, tokenizer = tiny_model("llama")
    model.to(torch.bfloat16)
    flags = freeze_every_other_parameter(model)
    calib = calibration(tokenizer)
    states = distill.dense_final_states(model, calib, 4)
    kl_divergence, fitted_prompts = distill.kl_divergence, []

    def out_of_memory(head, student, teacher, gradient=True):
        """Fails in the fit's second prompt, after the first one's backward filled the gradients."""
        if gradient:
            fitted_prompts.append(student.shape[0])
            if len(fitted_prompts) == 2:
                raise RuntimeError("out of memory")
        return kl_divergence(head, student, teacher, gradient)

    monkeypatch.setattr(distill, "kl_divergence", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        distill.distill_(model, calib, states, 3, 1e-3, 4)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    monkeypatch.setattr(distill, "kl_divergence", lambda head, student, teacher, gradient=True: (float("nan"), student * 0))
    with pytest.raises(tfprune.errors.NonFiniteActivationError, match="diverged at step 0"):
        distill.distill_(model, calib, states, 3, 1e-3, 4)


def test_reconstruction_leaves_no_gradient_behind(tiny_model):
    model, tokenizer = tiny_model("llama")
    config = PruneConfig(pattern="2:4", distill=0, **{**SMALL, "reconstruct": 3})
    tfprune.prune(model, tokenizer, config, progress=False)
    assert all(p.grad is None for p in model.parameters())


def test_a_distillation_that_cannot_fit_the_memory_is_refused_before_pruning(tiny_model, monkeypatch):
    model, tokenizer = tiny_model("llama")
    before = {name: p.clone() for name, p in model.named_parameters()}
    monkeypatch.setattr(distill, "free_memory", lambda device: 1000)
    with pytest.raises(ConfigError, match="--distill: it needs ~.* GiB more on cpu"):
        tfprune.prune(model, tokenizer, PruneConfig(pattern="2:4", distill=2, **SMALL), progress=False)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


@pytest.mark.parametrize("pattern, method, steps", [("2:4", "wanda", DEFAULT_DISTILL_STEPS),
                                                    ("4:8", "sparsegpt", DEFAULT_DISTILL_STEPS),
                                                    ("unstructured", "wanda", 0), ("2:4", "magnitude", 0)])
def test_distillation_is_the_in_memory_default_for_nm_patterns_only(tiny_model, pattern, method, steps):
    model, tokenizer = tiny_model("llama")
    report = tfprune.prune(model, tokenizer, PruneConfig(pattern=pattern, method=method, **SMALL), progress=False)
    assert (report.distillation or {}).get("steps", 0) == steps


def test_the_default_distillation_is_skipped_with_a_warning_where_it_does_not_fit(tiny_model, monkeypatch, caplog):
    model, tokenizer = tiny_model("llama")
    config = PruneConfig(pattern="2:4", **SMALL)
    needed = distill.fit_bytes(model, config)
    monkeypatch.setattr(distill, "free_memory", lambda device: needed)
    assert distill.planned_steps(model, config) == (DEFAULT_DISTILL_STEPS, None)
    monkeypatch.setattr(distill, "free_memory", lambda device: needed - 1)
    report = tfprune.prune(model, tokenizer, config, progress=False)
    assert report.distillation is None and "no end-to-end distillation" in caplog.text
    assert "GiB are free" in report.distillation_skipped and "no distillation" in report.table()
    with pytest.raises(ConfigError, match="--distill: it needs"):  # asked for: refused, not skipped
        distill.planned_steps(model, PruneConfig(pattern="2:4", distill=DEFAULT_DISTILL_STEPS, **SMALL))


def test_fit_bytes_counts_the_upcast_the_states_and_one_prompts_activations(tiny_model):
    model, _ = tiny_model("llama")
    short, long = PruneConfig(pattern="2:4", **SMALL), PruneConfig(pattern="2:4", **{**SMALL, "seqlen": 96})
    blocks, hidden = len(decoder_layers(model)), model.config.hidden_size
    # doubling the tokens adds the states of nsamples more prompts' tokens and one prompt's activations
    grown = distill.fit_bytes(model, long) - distill.fit_bytes(model, short)
    vocab = model.config.vocab_size
    heads = model.config.num_attention_heads
    activations = lambda t: (4 * t * ((blocks + 16) * hidden + 4 * model.config.intermediate_size)
                             + 8 * heads * t * t + 16 * min(distill.CHUNK_VALUES, t * vocab))
    assert grown == SMALL["nsamples"] * 48 * hidden * 4 + activations(96) - activations(48)
    fitted = sum(p.numel() for p in {id(p): p for block in decoder_layers(model) for p in block.parameters()}.values())
    assert distill.fit_bytes(model, short) == 13 * fitted + SMALL["nsamples"] * 48 * hidden * 4 + activations(48)
    half = copy.deepcopy(model).to(torch.bfloat16)  # every parameter grows by 2 bytes to float32, half the states
    numel = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert distill.fit_bytes(half, short) - distill.fit_bytes(model, short) == 2 * numel - (
        SMALL["nsamples"] * 48 * hidden * 2)


def test_every_block_runs_under_activation_checkpointing_one_prompt_at_a_time(tiny_model, monkeypatch):
    model, tokenizer = tiny_model("llama")
    calib = calibration(tokenizer)
    layer = type(decoder_layers(model)[0])
    calls = []
    forward = layer.forward

    def counted(self, hidden_states, *args, **kwargs):
        calls.append((hidden_states.shape[0], torch.is_grad_enabled()))
        return forward(self, hidden_states, *args, **kwargs)

    states = distill.dense_final_states(model, calib, 4)
    monkeypatch.setattr(layer, "forward", counted)
    calls.clear()
    distill.distill_(model, calib, states, 1, 1e-3, 4)
    blocks = len(decoder_layers(model))
    per_prompt = [(1, True)] * 2 * blocks  # the forward and, in the backward, the recomputation
    batch = next(iter(calib.batches(4)))[0].shape[0]
    assert calls[blocks:-blocks] and sorted(calls[blocks:-blocks]) == sorted(per_prompt * batch)
    assert all("forward" not in vars(block) for block in decoder_layers(model))  # the class's forward again


def test_checkpointing_restores_a_forward_set_on_the_block_itself(tiny_model):
    model, _ = tiny_model("llama")
    first, second = decoder_layers(model)[:2]
    hooked = first.forward  # as accelerate's hooks set it: an attribute of the instance
    first.forward = hooked
    with distill.checkpointed_blocks(model):
        assert first.forward is not hooked and "forward" in vars(second)
    assert first.forward is hooked and "forward" not in vars(second)


def test_the_default_distillation_is_skipped_for_a_model_whose_logits_are_not_its_head(tiny_model, monkeypatch):
    model, tokenizer = tiny_model("llama")
    forward = type(model).forward

    def scaled(self, *args, **kwargs):  # a logit scale the head does not know (as Cohere's, Granite's)
        out = forward(self, *args, **kwargs)
        out.logits = out.logits * 0.5
        return out

    monkeypatch.setattr(type(model), "forward", scaled)
    dense = copy.deepcopy(model)
    with pytest.raises(ConfigError, match="not its LM head applied"):  # asked for: refused
        tfprune.prune(copy.deepcopy(model), tokenizer, PruneConfig(pattern="2:4", distill=2, **SMALL),
                      progress=False)
    report = tfprune.prune(model, tokenizer, PruneConfig(pattern="2:4", **SMALL), progress=False)
    assert report.distillation is None and "not its LM head applied" in report.distillation_skipped
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), dense.parameters()))  # pruned all the same
