"""Choice of the number of augmentation workers: machine rule, overrides and their precedence, bad values."""

from __future__ import annotations

import pytest

from vessel_seg.cli.train import main as vs_train
from vessel_seg.errors import VesselSegError
from vessel_seg.trainers.settings import TrainingSettings
from vessel_seg.trainers.workers import (
    MAX_ACCELERATOR_WORKERS,
    cgroup_cpu_limit,
    default_num_workers,
    processes_per_node,
    resolve_num_workers,
    usable_cpu_count,
)


@pytest.mark.parametrize(("cpus", "processes", "expected"), [
    (16, 1, 15),  # the H200 machine: one CPU left to the training process
    (48, 4, 11),  # nnU-Net's example: 4 GPUs, 48 threads
    (64, 4, 15),
    (2, 1, 1),
    (1, 1, 1),
    (8, 16, 1),  # more processes than CPUs: still one worker each
    (256, 1, MAX_ACCELERATOR_WORKERS),
])
def test_accelerator_rule_gives_each_process_its_share_minus_one(cpus, processes, expected):
    assert default_num_workers(cpus, processes, accelerator=True) == expected


@pytest.mark.parametrize(("cpus", "processes", "expected"), [
    (2, 1, 2),  # the measured CPU setting is kept on 2-core machines
    (1, 1, 1),
    (16, 1, 2),
    (32, 1, 4),
    (128, 1, 4),
    (2, 2, 1),  # two CPU ranks on two cores
])
def test_cpu_rule_keeps_augmentation_small(cpus, processes, expected):
    assert default_num_workers(cpus, processes, accelerator=False) == expected


def test_local_world_size_splits_the_cpus_between_ranks():
    assert processes_per_node({"LOCAL_WORLD_SIZE": "4"}) == 4
    assert processes_per_node({}) == 1 and processes_per_node({"LOCAL_WORLD_SIZE": "x"}) == 1
    choice = resolve_num_workers(None, "cuda", env={"LOCAL_WORLD_SIZE": "4"}, cpus=16)
    assert (choice.count, choice.source) == (3, "auto")
    assert "16 usable CPU(s), 4 training process(es)" in choice.describe()
    assert resolve_num_workers(None, "cpu", env={}, cpus=2).count == 2


def test_flag_beats_vs_env_beats_nnunet_env():
    env = {"VS_N_PROC_DA": "5", "nnUNet_n_proc_DA": "7"}
    choice = resolve_num_workers(3, "cuda", env=env, cpus=16)
    assert (choice.count, choice.source) == (3, "--num-workers")
    assert resolve_num_workers(0, "cuda", env=env).count == 0  # 0 is a value, not "unset"
    choice = resolve_num_workers(None, "cuda", env=env, cpus=16)
    assert (choice.count, choice.source) == (5, "VS_N_PROC_DA")
    choice = resolve_num_workers(None, "cuda", env={"nnUNet_n_proc_DA": "7", "VS_N_PROC_DA": " "}, cpus=16)
    assert (choice.count, choice.source) == (7, "nnUNet_n_proc_DA") and "from nnUNet_n_proc_DA" in choice.describe()
    assert resolve_num_workers(None, "cuda", env={"VS_N_PROC_DA": "40"}, cpus=2).count == 40  # explicit: as given


@pytest.mark.parametrize("value", ["abc", "-1", "2.5", "1e3"])
@pytest.mark.parametrize("name", ["VS_N_PROC_DA", "nnUNet_n_proc_DA"])
def test_bad_env_values_are_one_line_user_errors(name, value):
    with pytest.raises(VesselSegError, match=rf"^{name}='{value}' is not a number of data augmentation workers: set it"):
        resolve_num_workers(None, "cuda", env={name: value}, cpus=16)


def test_bad_env_value_stops_vs_train_before_any_work(monkeypatch, capsys, data_roots):
    monkeypatch.setenv("VS_N_PROC_DA", "many")
    assert vs_train(["999", "3d_fullres", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "VS_N_PROC_DA='many'" in err[0] and "unset it" in err[0]


def test_settings_default_to_auto_and_reject_negative_counts():
    assert TrainingSettings().num_workers is None
    with pytest.raises(ValueError, match="num_workers"):
        TrainingSettings(num_workers=-1)
    with pytest.raises(VesselSegError, match="--num-workers"):
        resolve_num_workers(-2, "cpu", env={})


def test_cgroup_quota_v2_and_v1(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(v2) == 1.5
    assert usable_cpu_count(v2) <= 2
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(v2) is None
    v1 = tmp_path / "v1" / "cpu,cpuacct"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path / "v1") == 3.0
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path / "v1") is None
    assert cgroup_cpu_limit(tmp_path / "nothing") is None
    assert usable_cpu_count(tmp_path / "nothing") >= 1
