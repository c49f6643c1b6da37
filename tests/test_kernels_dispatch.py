"""tfprune.ops backend dispatch (TFPRUNE_BACKEND) and the engine on Triton vs torch: identical masks."""
import pytest
import torch

import tfprune
from kernel_testing import DEVICE, interpreter, load_kernels  # noqa: F401  (autouse fixture)
from tfprune import PruneConfig, ops
from tfprune.engine import decoder_layers, find_linears, weight_matrix
from tfprune.errors import BackendError

load_kernels()


def test_auto_picks_torch_for_cpu_and_triton_for_cuda(monkeypatch):
    monkeypatch.delenv("TFPRUNE_BACKEND", raising=False)
    assert ops.backend(torch.zeros(2)) == "torch"
    monkeypatch.setenv("TFPRUNE_BACKEND", "torch")
    assert ops.backend(torch.zeros(2, device=DEVICE)) == "torch"
    if DEVICE == "cuda":
        monkeypatch.setenv("TFPRUNE_BACKEND", "auto")
        assert ops.backend(torch.zeros(2, device="cuda")) == "triton"
        assert ops.backend(torch.zeros(2, device="cuda", dtype=torch.float64)) == "torch"


def test_forcing_triton_where_it_cannot_run_is_an_error(monkeypatch):
    monkeypatch.setenv("TFPRUNE_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendError, match="CPU tensors.*TRITON_INTERPRET=1"):
        ops.row_mask(torch.rand(2, 8), 0.5)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(BackendError, match="fp16/bf16/fp32, got torch.float64"):
        ops.row_mask(torch.rand(2, 8, dtype=torch.float64, device=DEVICE), 0.5)
    monkeypatch.setattr(ops, "_triton_error", lambda: "ModuleNotFoundError: No module named 'triton'")
    with pytest.raises(BackendError, match="triton cannot be imported"):
        ops.nm_mask(torch.rand(2, 8, device=DEVICE), 2, 4)
    monkeypatch.setenv("TFPRUNE_BACKEND", "cuda-please")
    with pytest.raises(BackendError, match="choose one of auto, torch, triton"):
        ops.scores(torch.rand(2, 8), "magnitude")


@pytest.mark.parametrize("method", ["magnitude", "wanda", "contrastive", "random"])
def test_ops_give_the_same_results_on_both_backends(method, monkeypatch):
    weight = torch.randn(12, 32, device=DEVICE).half()
    norm = torch.rand(32, dtype=torch.float64, device=DEVICE) * 5
    contrast = torch.rand(32, dtype=torch.float64, device=DEVICE)
    protect = torch.arange(32, device=DEVICE) % 9 == 0
    kwargs = dict(norm=norm, contrast_norm=contrast, protect=protect, seed=3)
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("TFPRUNE_BACKEND", backend)
        score = ops.scores(weight, method, **kwargs)
        nm_weight, row_weight = weight.clone(), weight.clone()
        results[backend] = (score, ops.nm_mask(score, 2, 4), ops.row_mask(score, 0.4),
                            ops.prune_weight_(nm_weight, method, nm=(2, 4), **kwargs), nm_weight,
                            ops.prune_weight_(row_weight, method, sparsity=0.4, **kwargs), row_weight,
                            ops.prune_weight_(weight.clone(), method, sparsity=0.4, apply=False, **kwargs))
    for ours, theirs in zip(results["triton"], results["torch"]):
        assert torch.equal(ours, theirs)
    assert torch.equal(results["torch"][5], results["torch"][7])


def test_pack_mask_is_numpy_packbits_little():
    np = pytest.importorskip("numpy")
    keep = torch.rand(5, 21) > 0.5
    assert torch.equal(ops.pack_mask(keep), torch.from_numpy(np.packbits(keep.numpy(), axis=1, bitorder="little")))


SMALL = dict(nsamples=4, seqlen=48, batch_size=4, reconstruct=0)  # the masks, not the fit


@pytest.mark.parametrize("options", [dict(sparsity=0.5),
                                     dict(pattern="2:4", protect="int8:6.0"),
                                     dict(method="contrastive", sparsity=0.6, owl=(5.0, 0.08))],
                         ids=["wanda", "2:4-protect", "contrastive-owl"])
def test_engine_masks_are_identical_on_torch_and_triton(options, monkeypatch):
    """The same pruning run of the built-in tiny llama with TFPRUNE_BACKEND=torch and =triton (interpreted
    on CPU) prunes exactly the same weights and reports the same statistics."""
    from tfprune.builtin import build_model

    runs = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("TFPRUNE_BACKEND", backend)
        model, tokenizer = build_model("llama")
        model.to(DEVICE)
        report = tfprune.prune(model, tokenizer, PruneConfig(**options, **SMALL), progress=False)
        masks = [weight_matrix(module) != 0 for block in decoder_layers(model)
                 for module in find_linears(block).values()]
        runs[backend] = (masks, model.state_dict(), report)
    (masks, state, report), (ref_masks, ref_state, ref_report) = runs["triton"], runs["torch"]
    assert len(masks) == 14 and all(torch.equal(a, b) for a, b in zip(masks, ref_masks))
    assert all(torch.equal(state[name], ref_state[name]) for name in ref_state)
    assert report.block_sparsity == pytest.approx(ref_report.block_sparsity, abs=1e-9)
    for ours, theirs in zip(report.layers, ref_report.layers):
        assert (ours.name, ours.protected, ours.sparsity) == (theirs.name, theirs.protected, theirs.sparsity)
        assert [c for c, _ in ours.top_channels] == [c for c, _ in theirs.top_channels]
