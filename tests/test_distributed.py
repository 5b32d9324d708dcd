"""Work shared by two processes (gloo, spawned) equals one process's: sample sets for deterministic
and stochastic samplers, feature extraction, a whole evaluation, and UCL with global negatives in
value and gradient (through DDP's averaging)."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from ccua.config import ConfigError, config_from_dict, sample_settings_changes
from ccua.distributed import DistInfo
from ccua.evaluation import evaluate_source
from ccua.generate import LoadedModel, sample_to_folder
from ccua.methods.ccua import ucl_loss
from ccua.metrics import RandomFeatureNet
from ccua.training import train
from tests.conftest import assert_close_to_scale, tiny_config_dict

#: sample settings: deterministic DDIM, and the two stochastic DDPM samplers (fresh noise every step)
SAMPLINGS = {"ddim": {}, "ddim_eta1": {"ddim": {"eta": 1.0}}, "ancestral": {"sampler": "ddpm"}}
LABELS = torch.tensor([3, 1, 4, 1, 5, 9, 2])  # 7 samples in chunks of 3: process 0 draws chunks 0 and 2
EVALUATION = {"features": "random", "per_class": 2, "max_reference": 40, "seed": 0, "reference_split": "test"}


def _feature_images() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (11, 8, 8, 1), dtype=np.uint8)


def _ucl_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """h [8, 6], weights [8], encoder inputs [8, 5]: the batch both runs see."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 6, generator=g), torch.rand(8, generator=g), torch.randn(8, 5, generator=g)


def _encoder() -> nn.Linear:
    torch.manual_seed(1)
    return nn.Linear(5, 6)


def _shared_work(folder: str, checkpoint: str, dist: DistInfo) -> dict:
    """Everything both runs do; the results of process 0 (and the UCL gradients of each process)."""
    loaded = LoadedModel(checkpoint, device="cpu")
    for name, changes in SAMPLINGS.items():
        sample = loaded.sample_settings(sample_settings_changes(changes, "test"))
        sample_to_folder(loaded, f"{folder}/{name}", sample, labels=LABELS, seed=5, progress=False, dist=dist)
    features = RandomFeatureNet(batch_size=3, progress=False).extract(_feature_images(), dist=dist)
    evaluate_source(checkpoint, f"{folder}/eval", cache_dir=f"{folder}/cache", dist=dist, **EVALUATION)
    h, weight, x = _ucl_inputs()
    rows = slice(4 * dist.rank, 4 * dist.rank + 4) if dist.enabled else slice(None)
    h = h[rows].clone().requires_grad_()
    loss = ucl_loss(h, 0.1, weight[rows], negatives="global")
    loss.backward()
    encoder = _encoder()
    model = nn.parallel.DistributedDataParallel(encoder) if dist.enabled else encoder
    ucl_loss(model(x[rows]), 0.1, weight[rows], negatives="global").backward()
    return {"features": features, "ucl": loss.detach(), "h_grad": h.grad,
            "encoder_grads": [p.grad for p in encoder.parameters()]}


def _worker(rank: int, port: int, folder: str, checkpoint: str) -> None:
    from ccua.distributed import init_distributed, cleanup

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist = init_distributed("cpu")
    try:
        torch.save(_shared_work(folder, checkpoint, dist), f"{folder}/rank{rank}.pt")
    finally:
        cleanup(dist)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(one process's results, two processes' results per rank, their folders)."""
    root = tmp_path_factory.mktemp("distributed")
    config = tiny_config_dict(root / "runs", train={"steps": 0}, diffusion={"ddpm": {"timesteps": 40}},
                              sample={"batch_size": 3})
    checkpoint = str(next((train(config_from_dict(config)) / "checkpoints").glob("*.pt")))
    (root / "one").mkdir()
    (root / "two").mkdir()
    one = _shared_work(str(root / "one"), checkpoint, DistInfo())
    mp.spawn(_worker, args=(_free_port(), str(root / "two"), checkpoint), nprocs=2, join=True)
    two = [torch.load(root / "two" / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return one, two, root


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_two_processes_draw_exactly_the_images_of_one(runs, sampling):
    _, _, root = runs
    with np.load(root / "one" / sampling / "images.npz") as one, np.load(root / "two" / sampling / "images.npz") as two:
        assert one["arr_0"].shape == (7, 8, 8, 1) and np.array_equal(one["arr_1"], LABELS.numpy())
        assert np.array_equal(one["arr_0"], two["arr_0"]) and np.array_equal(one["arr_1"], two["arr_1"])
    one_pngs = sorted(p.name for p in (root / "one" / sampling / "png").iterdir())
    assert one_pngs == sorted(p.name for p in (root / "two" / sampling / "png").iterdir())  # written by both ranks
    assert len(one_pngs) == 7 and (root / "two" / sampling / "grid.png").exists()
    info = [json.loads((root / n / sampling / "sample_info.json").read_text()) for n in ("one", "two")]
    assert {k: v for k, v in info[0].items() if k != "checkpoint"} == {k: v for k, v in info[1].items()
                                                                       if k != "checkpoint"}


def test_stochastic_samplers_draw_fresh_noise(runs):
    _, _, root = runs
    images = {name: np.load(root / "one" / name / "images.npz")["arr_0"] for name in SAMPLINGS}
    assert not np.array_equal(images["ddim"], images["ddim_eta1"])


def test_shared_feature_extraction_equals_one_process(runs):
    one, two, _ = runs
    assert torch.equal(one["features"][0], two[0]["features"][0]) and one["features"][0].shape == (11, 32)
    assert torch.equal(one["features"][1], two[0]["features"][1])
    assert two[1]["features"] == (None, None)  # the other process's share went to process 0


def test_a_shared_evaluation_writes_the_metrics_of_one_process(runs):
    _, _, root = runs
    one, two = (json.loads((root / n / "eval" / "metrics.json").read_text()) for n in ("one", "two"))
    for key in ("overall", "groups", "per_class", "memorisation"):
        assert one[key] == two[key], key
    assert one["overall"]["n_gen"] == 20 and list((root / "two" / "cache").rglob("*.npz"))


def test_global_negatives_give_the_ucl_of_the_whole_batch_in_value_and_gradient(runs):
    one, two, _ = runs
    h, weight, _ = _ucl_inputs()
    assert torch.allclose(one["ucl"], ucl_loss(h, 0.1, weight))  # one process: global is the batch itself
    # the mean over the processes (what the trainer logs) is the whole batch's UCL
    assert_close_to_scale((two[0]["ucl"] + two[1]["ucl"]) / 2, one["ucl"], rel=1e-6)
    # DDP averages over the processes: the gradient of each sample is its summed gradient / 2
    assert_close_to_scale(torch.cat([two[0]["h_grad"], two[1]["h_grad"]]) / 2, one["h_grad"])
    for a, b, c in zip(one["encoder_grads"], two[0]["encoder_grads"], two[1]["encoder_grads"]):
        assert_close_to_scale(b, a)
        assert torch.equal(b, c)  # the processes' averaged gradients are one all-reduce: bit for bit equal
    local = ucl_loss(h[:4], 0.1, weight[:4])  # what each process sees with local negatives differs
    assert not torch.allclose(local, two[0]["ucl"])


def test_global_negatives_refuse_the_sub_batch_ucl(tmp_path):
    from ccua.build import check_config

    with pytest.raises(ConfigError, match="negatives=global needs ucl_fraction = uncond_fraction = 1"):
        check_config(config_from_dict(tiny_config_dict(tmp_path, method={"ccua": {
            "negatives": "global", "ucl_fraction": 0.5, "uncond_fraction": 0.5}})))
    with pytest.raises(ConfigError, match="method.ccua.negatives='all' is not one of: local, global"):
        check_config(config_from_dict(tiny_config_dict(tmp_path, method={"ccua": {"negatives": "all"}})))
