"""The trainer: exact resume, bad input, and real two-process training stopped by a signal to one process."""

import json
import os
import signal
import socket

import pytest
import torch
import torch.multiprocessing as mp

from ccua.config import ConfigError, config_from_dict
from ccua.methods import METHODS
from ccua.methods.base import Method
import ccua.training.trainer as trainer_module
from ccua.training import Trainer, TrainingDiverged, train
from ccua.stopping import REQUEUE_EXIT_CODE, TrainingInterrupted
from ccua.checkpoint import list_checkpoints, load_checkpoint
from ccua.distributed import cleanup
from tests.conftest import assert_close_to_scale, tiny_config_dict


def _final_weights(run_dir):
    state = load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1])
    return state


def test_resume_gives_exactly_the_uninterrupted_weights(tmp_path):
    full = config_from_dict(tiny_config_dict(tmp_path / "a", train={"steps": 6}))
    full_run = train(full)
    # The same run stopped at step 3 (its checkpoint), then resumed to step 6.
    half = config_from_dict(tiny_config_dict(tmp_path / "b", train={"steps": 3}))
    train(half)
    resumed_config = config_from_dict(tiny_config_dict(tmp_path / "b", train={"steps": 6}))
    resumed_run = train(resumed_config, resume="latest")
    a, b = _final_weights(full_run), _final_weights(resumed_run)
    assert a["step"] == b["step"] == 6
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])


def test_run_folder_contents(tmp_path):
    run = train(config_from_dict(tiny_config_dict(tmp_path / "runs")))
    assert run.name == "000-tiny"
    assert (run / "config.yaml").exists() and (run / "loss_curves.png").exists()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "samples" / "grid_0000006.png").exists()
    records = [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert {"dm", "ucl", "al", "total", "steps_per_sec", "images_per_sec"} <= set(records[0])
    assert records[0]["total"] == pytest.approx(records[0]["dm"] + records[0]["ucl"] + records[0]["al"], rel=1e-5)
    # keep_checkpoints = 3, checkpoints at 3 and 6
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["0000003.pt", "0000006.pt"]
    # the TensorBoard events hold every loss term
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"loss/dm", "loss/ucl", "loss/al", "loss/total", "train/steps_per_sec"} <= set(events.Tags()["scalars"])
    assert train(config_from_dict(tiny_config_dict(tmp_path / "runs"))).name == "001-tiny"


class _ExplodesAtStep3(Method):
    name = "explodes"
    calls = 0

    def __init__(self, config=None):
        pass

    def loss_terms(self, context, outputs):
        type(self).calls += 1
        value = float("nan") if type(self).calls >= 3 else 0.0
        return {"boom": outputs.predictions["cond"].sum() * 0 + value}


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "explodes", _ExplodesAtStep3)
    _ExplodesAtStep3.calls = 0
    config = config_from_dict(tiny_config_dict(tmp_path / "runs", train={"ckpt_every": 2}))
    config.method.names = ["explodes"]
    with pytest.raises(TrainingDiverged, match=r"step 3; last good checkpoint: .*0000002\.pt"):
        train(config)
    assert [p.name for p in list_checkpoints(tmp_path / "runs" / "000-tiny" / "checkpoints")] == ["0000002.pt"]


def test_checkpoint_from_another_config_is_refused(tmp_path):
    run = train(config_from_dict(tiny_config_dict(tmp_path / "runs", train={"steps": 3})))
    other = config_from_dict(tiny_config_dict(tmp_path / "runs", model={"unet": {"ch": 16}}, train={"steps": 6}))
    with pytest.raises(ConfigError, match="model.unet.ch: checkpoint 8 vs config 16"):
        train(other, resume=str(run))


def test_ucl_with_a_batch_of_one_is_refused_before_training(tmp_path):
    config = config_from_dict(tiny_config_dict(tmp_path / "runs", train={"batch_size": 1}))
    with pytest.raises(ConfigError, match="per-process batch of at least 2"):
        train(config)
    plain = config_from_dict(tiny_config_dict(tmp_path / "runs", train={"batch_size": 1, "steps": 1},
                                              method={"names": ["plain"]}))
    assert train(plain).exists()  # the plain objective is defined at batch size 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, config_dict: dict, out: str, signal_step: int) -> None:
    """One process of a 2-process run; process 1 alone sends itself SIGUSR1 during ``signal_step``."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if rank == 1:
        real, calls = trainer_module.training_losses, []

        def losses_then_signal(*args, **kwargs):
            calls.append(1)
            if len(calls) == signal_step:
                os.kill(os.getpid(), signal.SIGUSR1)
            return real(*args, **kwargs)

        trainer_module.training_losses = losses_then_signal
    trainer = Trainer(config_from_dict(config_dict), device="cpu")
    try:
        trainer.train()
        exit_code = 0
    except TrainingInterrupted as stop:
        exit_code = stop.code
    finally:
        cleanup(trainer.dist)
    torch.save({"model": trainer.model.state_dict(), "run": str(trainer.run_dir), "step": trainer.step,
                "exit": exit_code}, f"{out}/rank{rank}.pt")


def test_two_processes_train_one_run_and_stop_together_on_a_signal_to_one(tmp_path):
    config_dict = tiny_config_dict(tmp_path / "runs", train={"steps": 6, "batch_size": 8, "ckpt_every": 2})
    mp.spawn(_worker, args=(2, _free_port(), config_dict, str(tmp_path), 3), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0["run"] == rank1["run"]  # one run folder, chosen by rank 0
    for name, value in rank0["model"].items():
        assert torch.equal(value, rank1["model"][name]), name
    # both stop after the step in which one of them got the signal, with one checkpoint of it
    assert rank0["step"] == rank1["step"] == 3 and rank0["exit"] == rank1["exit"] == REQUEUE_EXIT_CODE
    checkpoints = list_checkpoints(tmp_path / "runs" / "000-tiny" / "checkpoints")
    assert [p.name for p in checkpoints] == ["0000002.pt", "0000003.pt"]
    initial, last = load_checkpoint(checkpoints[0]), load_checkpoint(checkpoints[1])
    assert initial["step"] == 2 and len(initial["rng"]) == 2  # both processes' RNG states are saved
    assert all(torch.equal(v, last["model"][k]) for k, v in rank0["model"].items())
    assert any(not torch.equal(v, initial["model"][k]) for k, v in rank0["model"].items())


def test_ema_decay_warms_up_then_holds():
    from ccua.training.trainer import ema_decay

    assert ema_decay(0.999, 0) == 0.0 and ema_decay(0.999, 5, start=5) == 0.0
    assert ema_decay(0.999, 1) == pytest.approx(2 / 11)
    assert ema_decay(0.999, 100_000) == 0.999
    # after 1000 steps the initial weights' share is small, unlike a constant 0.999 (37%)
    share = 1.0
    for step in range(1, 1001):
        share *= ema_decay(0.999, step)
    assert share < 1e-3


def test_accumulated_micro_batches_give_the_gradient_of_the_whole_batch(tmp_path, monkeypatch):
    """With a loss that is a mean over samples (no random draws), k micro-batches of B/k add up to
    the gradient of the batch of B: the accumulation's scaling and summing, checked directly."""
    def deterministic_losses(runner, objective, methods, x0, labels, null_label, *args):
        t = torch.full((x0.shape[0],), 500, dtype=torch.long)
        prediction, _ = runner(x0, t, labels)
        loss = (prediction - x0).pow(2).flatten(1).mean(1).mean()
        return {"dm": loss, "total": loss}

    monkeypatch.setattr(trainer_module, "training_losses", deterministic_losses)
    gradients = []
    for accumulate in (1, 4):
        config = config_from_dict(tiny_config_dict(tmp_path / str(accumulate), method={"names": ["plain"]},
                                                   train={"accumulate": accumulate}, model={"unet": {"dropout": 0.0}}))
        trainer = Trainer(config)
        torch.manual_seed(0)
        x0, labels = torch.rand(8, 1, 8, 8) * 2 - 1, torch.arange(8) % 3
        trainer.optimizer.zero_grad()
        terms = trainer._accumulated_gradients(x0, labels)
        gradients.append(([p.grad.clone() for p in trainer.model.parameters()], terms["dm"]))
        cleanup(trainer.dist)
    (whole, whole_loss), (parts, parts_loss) = gradients
    assert parts_loss.item() == pytest.approx(whole_loss.item(), rel=1e-5)
    for a, b in zip(whole, parts):
        assert_close_to_scale(b, a, rel=1e-4)


def test_a_micro_batch_too_small_for_a_method_is_refused(tmp_path):
    config = config_from_dict(tiny_config_dict(tmp_path, train={"accumulate": 8}))  # CCUA on micro-batches of 1
    with pytest.raises(ConfigError, match="in 8 micro-batch"):
        Trainer(config)
    with pytest.raises(ConfigError, match="train.accumulate=3 does not divide"):
        Trainer(config_from_dict(tiny_config_dict(tmp_path, train={"accumulate": 3})))
