"""On a GPU, the captured CUDA-graph step trains exactly as the eager step does."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _trial(tmp_path, *extra: str):
    from critbatch_trainer.config import parse_args
    from critbatch_trainer.loop import Trial

    cfg = parse_args(["--device", "cuda", "--batch-size", "8", "--fid-threshold", "1",
                      "--max-steps", "1", "--eval-samples", "50", "--gns-every", "0",
                      "--stats-cache", str(tmp_path), "--termination-log", "", *extra])
    return Trial.create(cfg, log=lambda _m: None)


@pytest.mark.parametrize("extra", [[], ["--bf16"]])
def test_cuda_graph_steps_match_eager_steps(tmp_path, extra) -> None:
    torch.backends.cudnn.deterministic = True  # same kernels on both sides
    try:
        eager, graph = _trial(tmp_path, *extra), _trial(tmp_path, "--cuda-graph", *extra)
        torch.backends.cudnn.benchmark = False  # the trials turn it on; it may pick unlike
        assert graph.gan.use_graph and not eager.gan.use_graph
        it_e, it_g = (t.data.batches(0, 8, 0, t.device) for t in (eager, graph))
        for step in range(8):  # warm-up steps, the capture, then replays
            eager.train_step(it_e)
            graph.train_step(it_g)
            le, lg = eager.gan.loss_values(), graph.gan.loss_values()
            for k in le:
                assert lg[k] == pytest.approx(le[k], rel=2e-2, abs=1e-4), (step, k)
        assert graph.gan._graph is not None
        # A replay on stale inputs would move most weights by ~lr (1e-3) per step.
        diff = [(pe - pg).detach().abs().mean() for pe, pg in
                zip(eager.gan.G.parameters(), graph.gan.G.parameters(), strict=True)]
        assert float(torch.stack(diff).max()) < 1e-5
    finally:
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = False
