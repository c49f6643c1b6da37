"""SparseGPT's OBS update: a direct float64 reference, exact sparsity, protection, reconstruction error on the
built-in model, numerical failures, bad input, and the engine/CLI wiring."""
from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from tfprune import PruneConfig, prune
from tfprune.builtin import build_model
from tfprune.calib import build_calibration, builtin_corpus
from tfprune.cli import build_parser, main
from tfprune.engine.discovery import decoder_layers, find_linears, weight_matrix
from tfprune.engine.calibrate import collect_block_stats
from tfprune.engine.capture import capture_layer_inputs
from tfprune.errors import ConfigError, HessianError, NonFiniteActivationError
from tfprune.sparsegpt import HessianCollector, HessianFactor, check_hessian, factorize, sparsegpt_prune_


# --------------------------------------------------------------------------------------------------------------
# Reference: OBS with an explicit inverse Hessian, eliminated one column at a time (no Cholesky, no lazy blocks).
def obs_ref(weight, hessian, *, sparsity=None, nm=None, keep=None, protect=None, blocksize=128, dampening=0.01):
    """Float64 SparseGPT. Returns (pruned weight [out, in] fp64, keep [out, in] bool)."""
    w = weight.double().clone()
    h = hessian.double().clone()
    rows, cols = w.shape
    dead = h.diagonal() == 0
    for j in dead.nonzero().flatten().tolist():
        h[j, j] = 1.0
    h += dampening * h.diagonal().mean() * torch.eye(cols, dtype=torch.float64)
    hinv = torch.linalg.inv(h)
    d2, hrows = [], []  # at step j: [H_F⁻¹]_jj and row j of H_F⁻¹ over the free columns F = {j, j+1, ...}
    for j in range(cols):
        d2.append(hinv[j, j].item())
        hrows.append(hinv[j].clone())
        hinv = hinv - torch.outer(hinv[:, j], hinv[j]) / hinv[j, j]
    d2 = torch.tensor(d2, dtype=torch.float64)

    def lowest(j0, j1, count):
        """Prune the `count` smallest (protected, w²/d², -index) of every row in columns j0..j1."""
        out = torch.zeros(rows, j1 - j0, dtype=torch.bool)
        for r in range(rows):
            keys = sorted((bool(protect is not None and protect[j]), 0.0 if dead[j] else (w[r, j] ** 2 / d2[j]).item(),
                           -j) for j in range(j0, j1))
            for _, _, negative in keys[:count]:
                out[r, -negative - j0] = True
        return out

    pruned = torch.zeros(rows, cols, dtype=torch.bool)
    if sparsity is not None:
        budget = int(cols * sparsity)
        free = [True] * cols if protect is None else (~protect).tolist()
        n_free = sum(free)

        def quota(i):  # pruned in columns [0, i): the budget over free columns, the excess over protected ones
            f = sum(free[:i])
            if budget <= n_free:
                return budget * f // n_free if budget else 0
            return f + (budget - n_free) * (i - f) // (cols - n_free)
    for j in range(cols):
        if sparsity is not None and j % blocksize == 0:
            j1 = min(j + blocksize, cols)
            pruned[:, j:j1] = lowest(j, j1, quota(j1) - quota(j))
        if nm is not None and j % nm[1] == 0:
            n, m = nm
            pruned[:, j : j + m] = lowest(j, j + m, m - n)
        if keep is not None:
            pruned[:, j] = ~keep[:, j]
        q = w[:, j].masked_fill(pruned[:, j], 0.0)
        w[:, j:] -= torch.outer((w[:, j] - q) / d2[j], hrows[j][j:])
        w[:, j] = q
    return w, ~pruned


def gram(rows=48, cols=64, tokens=400, seed=0, dead=()):
    """Random weight [rows, cols] and H = XᵀX of correlated inputs (a few large channels, as in LLMs)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, cols, generator=g, dtype=torch.float64)
    x = x @ (torch.eye(cols, dtype=torch.float64) + 0.3 * torch.randn(cols, cols, generator=g, dtype=torch.float64))
    x[:, :3] *= 10
    x[:, list(dead)] = 0
    weight = torch.randn(rows, cols, generator=g)
    return weight, (x.T @ x).float(), x


CASES = {
    "unstructured": dict(sparsity=0.5),
    "unstructured-0.7": dict(sparsity=0.7),
    "2:4": dict(nm=(2, 4)),
    "1:4": dict(nm=(1, 4)),
    "4:8": dict(nm=(4, 8)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("protected", [False, True])
def test_matches_float64_reference(case, protected):
    weight, hessian, _ = gram(cols=64, dead=(5,))
    protect = torch.zeros(64, dtype=torch.bool)
    if protected:
        protect[[0, 1, 2, 9, 40]] = True
    options = dict(CASES[case], protect=protect if protected else None, blocksize=16)
    expected, expected_keep = obs_ref(weight, hessian, **options)
    w64 = weight.double().clone()
    result = sparsegpt_prune_(w64, hessian.double(), dtype=torch.float64, **options)
    assert torch.equal(result.keep, expected_keep)
    torch.testing.assert_close(w64, expected, rtol=1e-9, atol=1e-9)
    w32 = weight.clone()  # the default fp32 path: same mask on these well-separated scores, close weights
    result32 = sparsegpt_prune_(w32, hessian, **options)
    assert torch.equal(result32.keep, expected_keep)
    torch.testing.assert_close(w32.double(), expected, rtol=1e-3, atol=1e-3)


def test_fixed_mask_matches_reference_and_keeps_the_mask():
    weight, hessian, _ = gram(cols=64, seed=1)
    keep = torch.rand(weight.shape, generator=torch.Generator().manual_seed(3)) > 0.5
    expected, _ = obs_ref(weight, hessian, keep=keep, blocksize=24)
    w = weight.clone()
    result = sparsegpt_prune_(w, hessian, keep=keep, blocksize=24)
    assert torch.equal(result.keep, keep) and torch.equal(w != 0, keep)
    torch.testing.assert_close(w.double(), expected, rtol=1e-3, atol=1e-3)
    # blocks are a lazy batching of the same column updates: the block size does not change the result
    w_one = weight.clone()
    sparsegpt_prune_(w_one, hessian, keep=keep, blocksize=64)
    torch.testing.assert_close(w_one, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.77])
@pytest.mark.parametrize("blocksize", [7, 16, 128])
def test_exact_per_row_sparsity(sparsity, blocksize):
    weight, hessian, _ = gram(rows=20, cols=61, dead=(8, 30))
    protect = torch.zeros(61, dtype=torch.bool)
    protect[[0, 1, 2, 60]] = True
    result = sparsegpt_prune_(weight, hessian, sparsity=sparsity, protect=protect, blocksize=blocksize)
    pruned = (~result.keep).sum(1)
    assert torch.equal(pruned, torch.full((20,), int(61 * sparsity)))
    assert torch.equal(weight == 0, ~result.keep)
    assert result.keep[:, protect].all() and result.violations == 0
    assert not result.keep[:, [8, 30]].any()  # dead channels go first


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (3, 8)])
def test_exact_nm(n, m):
    weight, hessian, _ = gram(rows=16, cols=64)
    result = sparsegpt_prune_(weight, hessian, nm=(n, m), blocksize=32)
    assert torch.equal(result.keep.reshape(16, -1, m).sum(-1), torch.full((16, 64 // m), n))
    assert torch.equal(weight == 0, ~result.keep)
    assert not torch.signbit(weight[weight == 0]).any()  # +0.0 only


def test_protected_channels_kept_and_absorb_updates():
    weight, hessian, _ = gram(cols=64)
    original = weight.clone()
    protect = torch.zeros(64, dtype=torch.bool)
    protect[[10, 33, 63]] = True
    for options in (dict(sparsity=0.6), dict(nm=(2, 4))):
        w = original.clone()
        result = sparsegpt_prune_(w, hessian, protect=protect, blocksize=16, **options)
        assert result.keep[:, protect].all() and result.violations == 0
        assert (w[:, protect] != original[:, protect]).float().mean() > 0.9  # they compensate
    # more protected channels than the per-row budget allows: exact sparsity wins, the overflow is reported
    many = torch.zeros(64, dtype=torch.bool)
    many[:48] = True
    w = original.clone()
    result = sparsegpt_prune_(w, hessian, sparsity=0.5, protect=many, blocksize=16)
    assert torch.equal((~result.keep).sum(1), torch.full((48,), 32))
    assert result.violations == 48 * 16


def test_dead_channels():
    weight, hessian, _ = gram(cols=32, dead=(4, 5, 6))
    factor = factorize(hessian)
    assert factor.dead.nonzero().flatten().tolist() == [4, 5, 6]
    result = sparsegpt_prune_(weight, factor, nm=(2, 4), blocksize=8)
    assert result.dead == 3 and torch.isfinite(weight).all()
    assert not result.keep[:, 5:7].any() and result.keep[:, 4].all()  # group 4..7: 3 dead tie at 0, higher index first


def test_non_pd_hessian_retries(caplog):
    weight, _, _ = gram(cols=32)
    bad = torch.eye(32)
    bad[0, 1] = bad[1, 0] = 1.5  # eigenvalue 1 - 1.5 < 0: dampening 0.01 and 0.1 fail, 1.0 (× mean diag 1) works
    with caplog.at_level(logging.WARNING, logger="tfprune"):
        factor = factorize(bad, 0.01, name="layer")
    assert factor.retries == 2 and math.isclose(factor.dampening, 1.0)
    assert "not positive definite" in caplog.text
    result = sparsegpt_prune_(weight, factor, sparsity=0.5)
    assert torch.isfinite(weight).all() and result.retries == 2
    hopeless = torch.tensor([[1.0, 1e6], [1e6, 1.0]])
    with pytest.raises(HessianError, match="not positive definite"):
        factorize(hopeless)


def test_bad_input():
    weight, hessian, _ = gram(rows=8, cols=16)
    with pytest.raises(ValueError, match="square"):
        factorize(hessian[:, :8])
    with pytest.raises(NonFiniteActivationError):
        factorize(hessian.clone().fill_diagonal_(float("nan")))
    with pytest.raises(ValueError, match="negative"):
        factorize(-hessian)
    with pytest.raises(ValueError, match="dampening"):
        factorize(hessian, 0.0)
    cases = [
        (dict(sparsity=0.5, nm=(2, 4)), "exactly one"),
        (dict(), "exactly one"),
        (dict(sparsity=1.0), "sparsity"),
        (dict(nm=(2, 4), blocksize=6), "multiple of M"),
        (dict(nm=(2, 3)), "multiple of M"),
        (dict(nm=(4, 4)), "0 < N < M"),
        (dict(keep=torch.ones(8, 15, dtype=torch.bool)), "keep"),
        (dict(sparsity=0.5, protect=torch.ones(16)), "protect"),
        (dict(sparsity=0.5, blocksize=0), "blocksize"),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            sparsegpt_prune_(weight.clone(), hessian, **options)
    with pytest.raises(ValueError, match="H is"):
        sparsegpt_prune_(weight[:, :8].clone(), factorize(hessian), sparsity=0.5)
    with pytest.raises(ValueError, match="NaN"):
        sparsegpt_prune_(torch.full((8, 16), float("nan")), hessian, sparsity=0.5)
    for options, message in [(dict(update="bogus"), "update"), (dict(method="sparsegpt", update="none"), "needs"),
                             (dict(dampening=0.0), "dampening"), (dict(dampening=float("nan")), "dampening"),
                             (dict(blocksize=0), "blocksize")]:
        with pytest.raises(ConfigError, match=message):
            PruneConfig(**options)
    assert PruneConfig(pattern="2:4", blocksize=6).obs_blocksize == 4
    assert PruneConfig(pattern="2:5").obs_blocksize == 125 and PruneConfig(pattern="1:256").obs_blocksize == 256
    assert PruneConfig(method="sparsegpt").update == "obs" and PruneConfig().update == "none"


# --------------------------------------------------------------------------------------------------------------
# The built-in model: per-layer reconstruction error on held-out calibration tokens, the hook's H, the engine.
@pytest.fixture(scope="module")
def llama():
    model, tokenizer = build_model("llama")
    return model, tokenizer


def _dense_inputs(model, calibration):
    """{(block, linear): X [real tokens, in] fp64} of the dense model."""
    captured, handles, state = {}, [], {}
    for index, block in enumerate(decoder_layers(model)):
        for name, module in find_linears(block).items():
            def hook(_module, args, _out, key=(index, name)):
                x = args[0].reshape(-1, args[0].shape[-1])[state["mask"]]
                captured.setdefault(key, []).append(x.double())
            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for ids, mask in calibration.batches(8):
                state["mask"] = mask.reshape(-1).bool()
                model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {key: torch.cat(parts) for key, parts in captured.items()}


def test_update_never_increases_heldout_error(llama):
    model, tokenizer = llama
    calib = build_calibration(None, tokenizer, PruneConfig(nsamples=12, seqlen=128, seed=0))
    heldout = build_calibration(None, tokenizer, PruneConfig(nsamples=8, seqlen=128, seed=1))
    train, test = _dense_inputs(model, calib), _dense_inputs(model, heldout)
    ratios = {}
    for (index, name), x in train.items():
        module = find_linears(decoder_layers(model)[index])[name]
        weight = weight_matrix(module).float()
        hessian = factorize((x.T @ x).float())
        norm = x.square().sum(0).sqrt()
        wanda = weight.abs() * norm.float()[None, :]
        groups = wanda.reshape(weight.shape[0], -1, 4)
        keep24 = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(2, -1).indices, True)
        order = wanda.argsort(1, descending=True)
        keep50 = torch.zeros_like(weight, dtype=torch.bool).scatter_(1, order[:, : weight.shape[1] // 2], True)
        runs = {"wanda-2:4+obs": dict(keep=keep24.reshape(weight.shape)), "wanda-50%+obs": dict(keep=keep50),
                "sparsegpt-2:4": dict(nm=(2, 4)), "sparsegpt-50%": dict(sparsity=0.5)}
        for label, options in runs.items():
            updated = weight.clone()
            result = sparsegpt_prune_(updated, hessian, blocksize=32, **options)
            masked = weight.masked_fill(~result.keep, 0.0)
            error = ((weight - updated).double() @ test[index, name].T).norm()
            baseline = ((weight - masked).double() @ test[index, name].T).norm()
            ratios[f"{index}.{name} {label}"] = float(error / baseline)
    worst = max(ratios, key=ratios.get)
    assert ratios[worst] <= 1.0, f"{worst}: the update increased the held-out error ×{ratios[worst]:.3f}"
    assert sorted(ratios.values())[len(ratios) // 2] < 0.9  # and it helps: median error ratio


def test_hook_hessian_shares_inputs_excludes_padding_and_matches_sumsq(llama):
    model, tokenizer = llama
    texts = [builtin_corpus().sentences[lang][0] for lang in ("en", "de", "zh", "ar", "fr", "ru")]
    calib = build_calibration(texts, tokenizer, PruneConfig(seqlen=96))
    assert (calib.attention_mask == 0).any()  # padded batches
    inputs = capture_layer_inputs(model, calib, "translation", batch_size=3)
    block = decoder_layers(model)[0]
    collector = HessianCollector()
    stats = collect_block_stats(block, 0, inputs, 6.0, hessians=collector)["translation"]
    assert collector.owner["self_attn.k_proj"] == collector.owner["self_attn.v_proj"] == "self_attn.q_proj"
    assert collector.owner["mlp.up_proj"] == "mlp.gate_proj"
    assert sorted(collector.hessians) == ["mlp.down_proj", "mlp.gate_proj", "self_attn.o_proj", "self_attn.q_proj"]
    expected = _dense_inputs(model, calib)
    for name, hessian in collector.hessians.items():
        x = expected[0, name]
        torch.testing.assert_close(hessian.double(), x.T @ x, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(hessian.diagonal().double(), stats[name].sumsq, rtol=1e-5, atol=1e-6)
    factor = collector.pop_factor("self_attn.q_proj")
    assert collector.pop_factor("self_attn.k_proj") is factor and "self_attn.q_proj" not in collector.hessians
    check_hessian(factor, stats["self_attn.q_proj"].sumsq)
    with pytest.raises(RuntimeError, match="same tokens"):
        check_hessian(factor, stats["self_attn.q_proj"].sumsq * 2)


def test_engine_sparsegpt_and_obs_update(tmp_path):
    for family, config in (
            ("llama", PruneConfig(method="sparsegpt", pattern="2:4", nsamples=4, seqlen=96, blocksize=32, reconstruct=0)),
            ("llama", PruneConfig(method="sparsegpt", sparsity=0.6, nsamples=4, seqlen=96, protect="topk:5%")),
            ("gpt2", PruneConfig(method="sparsegpt", pattern="2:4", nsamples=4, seqlen=64, reconstruct=4))):  # Conv1D
        model, tokenizer = build_model(family)
        report = prune(model, tokenizer, config, progress=False)
        for layer in report.layers:
            assert math.isclose(layer.sparsity, config.sparsity, abs_tol=1 / 64) and layer.violations == 0
        for block in decoder_layers(model):
            for module in find_linears(block).values():
                w = weight_matrix(module)
                assert torch.isfinite(w).all()
                if config.nm:
                    assert ((w != 0).reshape(w.shape[0], -1, 4).sum(-1) == 2).all()
                else:
                    assert ((w == 0).sum(1) == int(w.shape[1] * 0.6)).all()
    # update 'obs' keeps the tfprune mask (block 0 sees identical inputs in both runs) and changes the weights
    runs = {}
    for update in ("none", "obs"):
        model, tokenizer = build_model("llama")
        prune(model, tokenizer, PruneConfig(pattern="2:4", nsamples=4, seqlen=96, update=update, reconstruct=0),
              progress=False)
        runs[update] = {name: weight_matrix(m).clone() for name, m in find_linears(decoder_layers(model)[0]).items()}
    for name, w in runs["obs"].items():
        assert torch.equal(w == 0, runs["none"][name] == 0)
        assert not torch.equal(w, runs["none"][name])


def test_cli(tmp_path):
    args = build_parser().parse_args(["prune", "builtin:llama", "--out", "x", "--method", "sparsegpt",
                                      "--dampening", "0.05", "--blocksize", "64"])
    assert (args.method, args.update, args.dampening, args.blocksize) == ("sparsegpt", None, 0.05, 64)
    out = tmp_path / "out"
    code = main(["prune", "builtin:llama", "--out", str(out), "--pattern", "2:4", "--update", "obs",
                 "--nsamples", "4", "--seqlen", "64", "--quiet", "--reconstruct", "4"])
    assert code == 0
    record = json.loads((out / "tfprune.json").read_text())
    assert record["config"]["update"] == "obs" and record["config"]["dampening"] == 0.01
    assert main(["prune", "builtin:llama", "--out", str(tmp_path / "bad"), "--method", "sparsegpt",
                 "--update", "none"]) == 2


def test_factor_is_reused_not_recomputed():
    weight, hessian, _ = gram(rows=8, cols=16)
    factor = factorize(hessian)
    assert isinstance(factor, HessianFactor) and factor.u.shape == (16, 16)
    assert torch.allclose(torch.triu(factor.u), factor.u)
    damped = hessian.double() + 0.01 * hessian.diagonal().double().mean() * torch.eye(16, dtype=torch.float64)
    torch.testing.assert_close(factor.u.double().T @ factor.u.double(), torch.linalg.inv(damped),
                               rtol=1e-3, atol=1e-6)




def test_offloaded_hessians_are_solved_on_their_device():
    from tfprune.sparsegpt import HessianCollector

    x = torch.randn(32, 8)
    collectors = [HessianCollector(), HessianCollector()]
    for collector in collectors:
        collector.hessians["a"], collector.owner["a"] = x.T @ x, "a"
    assert not collectors[0].offload_if_needed(free_bytes=1)  # H already in host memory: nothing to offload
    collectors[1]._home = torch.device("cpu")  # as after an offload from the device: H goes back before solving
    first, second = (collector.pop_factor("a") for collector in collectors)
    assert torch.equal(first.u, second.u) and torch.equal(first.diag, second.diag)
