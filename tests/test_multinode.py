"""Two torchrun launchers ("nodes") meeting through a c10d rendezvous train one run, as on a cluster."""

import os
import socket
import subprocess
import sys

import yaml

from ccua.checkpoint import list_checkpoints, load_checkpoint
from ccua.launch import TORCH_VARIABLES
from tests.conftest import tiny_config_dict


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_launchers_with_a_c10d_rendezvous_train_one_run(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "runs", train={"steps": 3, "ckpt_every": 2})))
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "--rdzv-id", "ccua-test",
               "-m", "ccua.cli", "train", str(config), "--resume", "auto"]
    env = {key: value for key, value in os.environ.items() if key not in TORCH_VARIABLES}
    env["OMP_NUM_THREADS"] = "1"
    launchers = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    outputs = [launcher.communicate(timeout=300) for launcher in launchers]
    assert [launcher.returncode for launcher in launchers] == [0, 0], outputs
    printed = [out for out, _ in outputs if "run folder:" in out]
    assert len(printed) == 1  # process 0 of one launcher reports; the other trained with it
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["000-tiny"]
    checkpoints = list_checkpoints(tmp_path / "runs" / "000-tiny" / "checkpoints")
    assert [p.name for p in checkpoints] == ["0000002.pt", "0000003.pt"]
    assert len(load_checkpoint(checkpoints[-1])["rng"]) == 2  # both launchers' processes in one group
