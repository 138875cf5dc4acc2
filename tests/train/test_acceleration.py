"""--acceleration: a run resolves it once, records it in config.json and keeps it on resume.

(A whole run records it: `test_distribute.test_a_run_records_its_resolved_acceleration`;
a killed run resumed without the flag ends under the recorded setting: the SIGKILL test.)
"""

import json
import os

import pytest

from larq_nobn import acceleration
from larq_nobn.train import files, options
from larq_nobn.train.config import Config, ConfigError
from tests.train.program import error_line, run_main, snapshot

FLAGS = ["--model=reactnet18_nobn", "--stem=cifar", "--dataset=digits", "--stages=1"]


def unfinished_run(model_dir, **recorded) -> None:
    """--model_dir as a killed run of `FLAGS` leaves it: config.json, nothing finished."""
    config = Config(
        model="reactnet18_nobn", stem="cifar", stages=(1,), model_dir=str(model_dir)
    ).resolved()
    saved = {**options.to_json(config), **recorded}
    os.makedirs(model_dir, exist_ok=True)
    files.write_json(os.path.join(model_dir, "config.json"), saved)


def test_auto_takes_the_setting_an_unfinished_run_recorded(tmp_path):
    unfinished_run(tmp_path, acceleration="exact")
    config = Config(
        model="reactnet18_nobn", stem="cifar", stages=(1,), model_dir=str(tmp_path)
    ).resolved()
    assert config.acceleration == "auto"
    assert config.keeping_recorded().acceleration == "exact"
    config.check_files()  # the flags are the run's
    # Resolved, the recorded setting wins over this process's and over the device kind.
    with acceleration.acceleration_scope("cpu"):
        assert config.with_acceleration_resolved().acceleration == "exact"
    # A run recorded before --acceleration existed resolves anew.
    unfinished_run(tmp_path / "old")
    with open(tmp_path / "old" / "config.json") as f:
        saved = {k: v for k, v in json.load(f).items() if k != "acceleration"}
    files.write_json(str(tmp_path / "old" / "config.json"), saved)
    old = Config(
        model="reactnet18_nobn", stem="cifar", stages=(1,), model_dir=str(tmp_path / "old")
    ).resolved()
    old.check_files()
    with acceleration.acceleration_scope("cpu"):
        assert old.with_acceleration_resolved().acceleration == "cpu"
    assert old.with_acceleration_resolved().acceleration == acceleration.resolve("auto")


@pytest.mark.parametrize("setting", ["exact", "cpu"])
def test_a_fresh_run_resolves_auto_or_keeps_a_named_setting(setting, tmp_path):
    config = Config(model_dir=str(tmp_path)).resolved()
    assert config.with_acceleration_resolved().acceleration == "cpu_light"  # CPUs only here
    with acceleration.acceleration_scope(setting):  # as LARQ_NOBN_ACCELERATION would
        assert config.with_acceleration_resolved().acceleration == setting
    named = Config(model_dir=str(tmp_path), acceleration=setting).resolved()
    assert named.with_acceleration_resolved().acceleration == setting


def test_a_resume_asking_for_another_setting_is_refused_in_one_line(tmp_path, capsys):
    model_dir = tmp_path / "run"
    unfinished_run(model_dir, acceleration="cpu_light")
    before = snapshot(model_dir)
    code = run_main(*FLAGS, "--acceleration=exact", f"--model_dir={model_dir}")
    assert code == 2
    line = error_line(capsys)
    assert "holds an unfinished run with other flags (acceleration)" in line
    assert snapshot(model_dir) == before


def test_a_recorded_value_that_is_no_setting_is_one_line(tmp_path):
    unfinished_run(tmp_path, acceleration="fastest")
    config = Config(
        model="reactnet18_nobn", stem="cifar", stages=(1,), model_dir=str(tmp_path)
    ).resolved()
    with pytest.raises(ConfigError, match="config.json: unknown --acceleration 'fastest'"):
        config.check_files()


def test_a_bad_environment_setting_is_one_line_before_anything_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(acceleration.VARIABLE, "fastest")
    assert run_main(*FLAGS, f"--model_dir={tmp_path / 'run'}") == 2
    assert error_line(capsys) == (
        "error: LARQ_NOBN_ACCELERATION must be one of auto, exact, fused, cpu_light, cpu, "
        "got 'fastest'"
    )
    assert not os.path.exists(tmp_path / "run")
    # A named setting does not read it.
    assert Config(acceleration="exact").resolved().acceleration == "exact"
