"""The SLURM queue's answers, without a cluster: the poll interval and sbatch's refusals as one line each (the real
cluster's answers are in tests/integration/test_slurm.py)."""

import pytest

from tgdfer.config import LauncherConfig
from tgdfer.sweep.slurm_queue import POLL_MAX, poll_interval, refusal


def test_the_poll_interval_is_a_tenth_of_the_time_waited_within_bounds():
    assert [poll_interval(t, 1.0) for t in (0, 5, 10, 45, 120, 3600)] == [1.0, 1.0, 1.0, 4.5, 12.0, POLL_MAX]
    assert poll_interval(0, 0.5) == 0.5 and POLL_MAX == 30.0


@pytest.fixture
def no_sinfo(tmp_path, monkeypatch):
    """No SLURM client on PATH: the messages then leave out what the partitions offer."""
    monkeypatch.setenv("PATH", str(tmp_path))


@pytest.mark.parametrize(
    ("stderr", "setting", "flag"),
    [
        ("sbatch: error: Invalid generic resource (gres) specification", "--slurm-gpus 1 (0 trains on CPUs)", "gpus"),
        (
            "sbatch: error: invalid partition specified: gpu\n"
            "sbatch: error: Batch job submission failed: Invalid partition name specified",
            "--slurm-partition gpu",
            "partition",
        ),
        (
            "sbatch: error: Memory specification can not be satisfied\n"
            "sbatch: error: Batch job submission failed: Requested node configuration is not available",
            "--slurm-mem-gb 16",
            "mem-gb",
        ),
    ],
)
def test_an_sbatch_refusal_names_the_setting_and_the_answer(no_sinfo, stderr, setting, flag):
    error = refusal(stderr, LauncherConfig(kind="slurm", partition="gpu" if flag == "partition" else None))
    answer = "; ".join(line.removeprefix("sbatch: error: ") for line in stderr.splitlines())
    assert str(error) == (
        f"--launcher slurm: expected sbatch to accept the array job, found it refused with {setting}: '{answer}'. "
        f"Change --slurm-{flag} to what the cluster offers"
    )


def test_a_refusal_about_extra_sbatch_options_names_them(no_sinfo):
    launcher = LauncherConfig(kind="slurm", sbatch=("constraint=a100",))
    error = refusal("sbatch: error: Invalid feature specification", launcher)
    assert "refused with launcher.sbatch ['constraint=a100']: 'Invalid feature specification'" in str(error)
    assert str(error).endswith("Change launcher.sbatch to what the cluster offers")
