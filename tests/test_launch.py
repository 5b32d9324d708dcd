"""Where a process stands in a launch: torchrun's variables, Slurm's srun tasks, and launches refused."""

import pytest
import yaml

from ccua.launch import LaunchError, default_master_port, device_index, expand_hostlist, launch_environment, shared_gpus
from tests.conftest import tiny_config_dict


@pytest.mark.parametrize("text, hosts", [
    ("node07", ["node07"]),
    ("node[01-03,7]", ["node01", "node02", "node03", "node7"]),
    ("a1,b[2-3]", ["a1", "b2", "b3"]),
    ("gpu[8-10]", ["gpu8", "gpu9", "gpu10"]),
    ("gpu[008-010]", ["gpu008", "gpu009", "gpu010"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
    ("x[1,3]-ib,y", ["x1-ib", "x3-ib", "y"]),
])
def test_slurm_host_lists_expand_in_order(text, hosts):
    assert expand_hostlist(text) == hosts


@pytest.mark.parametrize("text", ["node[1-3", "node]1[", "node[a-b]", ""])
def test_a_host_list_that_cannot_be_read_is_named(text):
    with pytest.raises(LaunchError, match="node list"):
        expand_hostlist(text)


def _srun_task(rank: int, local: int, tasks: int = 4, **extra) -> dict[str, str]:
    """The variables srun sets for one task of a 2-node, 4-task step (job 4242)."""
    env = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_NTASKS": str(tasks),
           "SLURM_STEP_NUM_TASKS": str(tasks), "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(local),
           "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_NODELIST": "gpu[07-08]"}
    return {**env, **extra}


def test_srun_tasks_map_to_one_process_group():
    mapped = [launch_environment(_srun_task(rank, rank % 2)) for rank in range(4)]
    assert mapped[3] == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu07",
                         "MASTER_PORT": str(20000 + 4242)}
    assert {m["MASTER_ADDR"] for m in mapped} == {"gpu07"} and [m["RANK"] for m in mapped] == ["0", "1", "2", "3"]
    assert default_master_port("1234567") == 24567 and default_master_port(None) == 29500
    # an exported rendezvous address wins over the node list and the default port
    assert launch_environment(_srun_task(1, 1, MASTER_ADDR="head", MASTER_PORT="31000"))["MASTER_ADDR"] == "head"
    assert launch_environment(_srun_task(1, 1, MASTER_PORT="31000"))["MASTER_PORT"] == "31000"


def test_torchrun_variables_win_over_slurm_and_single_processes_map_to_nothing():
    torchrun = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "29400"}
    assert launch_environment({**_srun_task(0, 0, tasks=2), **torchrun}) == torchrun
    assert launch_environment({}) == {}
    assert launch_environment({"RANK": "0", "WORLD_SIZE": "1"}) == {}
    assert launch_environment(_srun_task(0, 0, tasks=1)) == {}  # `srun -n1 ccua train`
    batch_script_of_one_task = {"SLURM_JOB_ID": "9", "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}
    assert launch_environment(batch_script_of_one_task) == {}


@pytest.mark.parametrize("env, message", [
    ({"SLURM_JOB_ID": "9", "SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"},
     "SLURM_NTASKS=4 but this process is not one of srun's tasks"),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, "WORLD_SIZE=2 without a rendezvous address"),
    ({"WORLD_SIZE": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"}, "WORLD_SIZE=2 but RANK is not set"),
    ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"}, r"RANK=2 is outside 0\.\.1"),
    ({"WORLD_SIZE": "two", "RANK": "0"}, "WORLD_SIZE='two' is not an integer"),
    ({k: v for k, v in _srun_task(1, 1).items() if k != "SLURM_PROCID"}, "SLURM_PROCID is not set"),
    ({k: v for k, v in _srun_task(1, 1).items() if "NODELIST" not in k}, "no node list"),
])
def test_launches_that_cannot_work_are_refused_with_the_variables_named(env, message):
    with pytest.raises(LaunchError, match=message):
        launch_environment(env)


def test_each_process_gets_its_own_gpu_or_the_launch_is_refused():
    assert [device_index(rank, 4) for rank in range(4)] == [0, 1, 2, 3]
    assert device_index(3, 1) == 0  # srun --gpus-per-task=1: each task sees only its own GPU
    with pytest.raises(LaunchError, match="LOCAL_RANK=2 but this process sees only 2 GPUs"):
        device_index(2, 2)
    with pytest.raises(LaunchError, match="sees no GPU"):
        device_index(0, 0)
    placements = [("n1", "GPU-a"), ("n1", "GPU-b"), ("n2", "GPU-a"), ("n1", "GPU-a")]
    assert shared_gpus(placements) == ["ranks 0, 3 on n1 all use GPU GPU-a"]
    assert shared_gpus(placements[:3]) == []


def test_a_refused_launch_is_one_line_from_the_cli(tmp_path, monkeypatch, capsys):
    from ccua.cli import main

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "runs")))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_JOB_ID", "17")
    assert main(["train", str(config)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors[-1].startswith("ccua: error: SLURM_NTASKS=2 but this process is not one of srun's tasks")
    assert not (tmp_path / "runs").exists()  # refused before a run folder was claimed


def test_the_wait_for_other_processes_is_a_positive_setting_that_a_resume_may_change(tmp_path):
    from ccua.config import ConfigError, config_from_dict
    from ccua.runs import resume_changes

    with pytest.raises(ConfigError, match=r"train.dist_timeout_minutes=0.0 must be > 0"):
        config_from_dict(tiny_config_dict(tmp_path, train={"dist_timeout_minutes": 0}))
    saved = config_from_dict(tiny_config_dict(tmp_path))
    longer = config_from_dict(tiny_config_dict(tmp_path, train={"dist_timeout_minutes": 90}))
    allowed, refused = resume_changes(saved, longer)
    assert saved.train.dist_timeout_minutes == 30 and allowed == {"train.dist_timeout_minutes": [30.0, 90.0]}
    assert refused == {}
