"""On a GPU, the captured CUDA-graph step trains exactly as the eager step does, for each
model (and BigGAN with recomputed activations, and with fused attention), a graph trial resumed
from its checkpoint trains as an uninterrupted one, recomputed activations train as stored
ones, and the fused attention computes the plain one without its score matrix."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

MODELS = {  # small networks: the test is about the step, not the model's size
    "dcgan": [],
    "wgan-gp": ["--model", "wgan-gp"],
    "biggan": ["--model", "biggan", "--image-size", "32", "--width", "8", "--ema-start", "4"],
}
MODELS["biggan-recompute"] = [*MODELS["biggan"], "--attention-res", "16",
                              "--recompute-activations"]
MODELS["biggan-fused"] = [*MODELS["biggan"], "--attention-res", "16", "--fused-attention"]


def _trial(tmp_path, *extra: str):
    from critbatch_trainer.config import parse_args
    from critbatch_trainer.loop import Trial

    cfg = parse_args(["--device", "cuda", "--batch-size", "8", "--fid-threshold", "1",
                      "--max-steps", "1", "--eval-samples", "50", "--gns-every", "0",
                      "--stats-cache", str(tmp_path / "stats"), "--termination-log", "",
                      *extra])
    return Trial.create(cfg, log=lambda _m: None)


@pytest.fixture
def deterministic():
    torch.backends.cudnn.deterministic = True  # same kernels on both sides
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = False


def _max_weight_difference(a, b) -> float:
    """The largest mean absolute difference of one of G's weights (and its EMA's)."""
    pairs = [(a.gan.G, b.gan.G)] + ([(a.gan.G_ema, b.gan.G_ema)] if a.gan.G_ema else [])
    diff = [(pa - pb).detach().abs().mean() for ga, gb in pairs
            for pa, pb in zip(ga.parameters(), gb.parameters(), strict=True)]
    return float(torch.stack(diff).max())


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("extra", [[], ["--bf16"]])
def test_cuda_graph_steps_match_eager_steps(tmp_path, deterministic, model, extra) -> None:
    args = [*MODELS[model], *extra]
    eager, graph = _trial(tmp_path, *args), _trial(tmp_path, "--cuda-graph", *args)
    torch.backends.cudnn.benchmark = False  # the trials turn it on; it may pick unlike
    assert graph.gan.use_graph and not eager.gan.use_graph
    it_e, it_g = (t.data.batches(0, 8, 0, t.device) for t in (eager, graph))
    for step in range(8):  # warm-up steps, the capture, then replays
        eager.gan.train_step(it_e, step)
        graph.gan.train_step(it_g, step)
        le, lg = eager.gan.loss_values(), graph.gan.loss_values()
        for k in le:
            assert lg[k] == pytest.approx(le[k], rel=2e-2, abs=1e-4), (step, k)
    assert graph.gan._graph is not None
    # A replay on stale inputs would move most weights by ~lr (1e-4 to 1e-3) per step.
    assert _max_weight_difference(eager, graph) < 1e-5


@pytest.mark.parametrize("model", MODELS)
def test_a_graph_trial_resumed_from_its_checkpoint_trains_as_an_uninterrupted_one(
        tmp_path, deterministic, model) -> None:
    def run(steps: int, *extra: str):
        t = _trial(tmp_path, "--cuda-graph", *MODELS[model], "--max-steps", str(steps),
                   "--eval-every", "5", *extra)
        torch.backends.cudnn.benchmark = False
        resumed = t.restore()
        t.run()
        return t, resumed

    whole, _ = run(10)
    ckpt = str(tmp_path / "ckpt")
    _, resumed = run(5, "--checkpoint-dir", ckpt)
    assert not resumed
    second, resumed = run(10, "--checkpoint-dir", ckpt)  # warms up and captures anew
    assert resumed and second.progress.step == whole.progress.step == 10
    assert second.gan._graph is not None
    assert _max_weight_difference(whole, second) < 1e-5
    assert second.progress.history[-1][1] == pytest.approx(whole.progress.history[-1][1],
                                                           rel=1e-3)


def test_recomputed_activations_train_as_stored_ones(tmp_path, deterministic) -> None:
    args = [*MODELS["biggan"], "--attention-res", "16"]
    stored, lean = _trial(tmp_path, *args), _trial(tmp_path, *args, "--recompute-activations")
    torch.backends.cudnn.benchmark = False
    it_s, it_l = (t.data.batches(0, 8, 0, t.device) for t in (stored, lean))
    for step in range(8):
        stored.gan.train_step(it_s, step)
        lean.gan.train_step(it_l, step)
        ls, ll = stored.gan.loss_values(), lean.gan.loss_values()
        for k in ls:
            assert ll[k] == pytest.approx(ls[k], rel=2e-2, abs=1e-4), (step, k)
    assert _max_weight_difference(stored, lean) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fused_attention_computes_the_plain_one_in_less_memory(dtype) -> None:
    """fp32 takes the memory-efficient kernel, bf16 (as under --bf16's autocast) flash."""
    from critbatch_trainer.models.biggan import Attention

    torch.manual_seed(0)
    plain = Attention(64).cuda()
    with torch.no_grad():
        plain.gamma.fill_(0.7)
    x = torch.randn(16, 64, 64, 64, device="cuda")
    out, peak = {}, {}
    for fused in (False, True):
        plain.fused = fused
        plain.zero_grad()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype is torch.bfloat16):
            y = plain(x)
        y.float().square().mean().backward()
        torch.cuda.synchronize()
        peak[fused] = torch.cuda.max_memory_allocated() - start
        out[fused] = (y.detach().float(), plain.theta.parametrizations.weight.original.grad)
    tol = {"rtol": 2e-2, "atol": 2e-3} if dtype is torch.bfloat16 else {"rtol": 1e-3,
                                                                          "atol": 1e-4}
    torch.testing.assert_close(out[True][0], out[False][0], **tol)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=5e-2, atol=1e-3)
    scores = 16 * 4096 * 1024 * (2 if dtype is torch.bfloat16 else 4)
    assert peak[False] >= scores and peak[True] < scores / 2, peak
