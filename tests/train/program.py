"""Helpers shared by the tests that run the training program, in this process or as
subprocesses, and read what it leaves in --model_dir."""

import csv
import hashlib
import json
import os
import socket
import subprocess
import sys
import types

import tensorflow as tf

from larq_nobn.train import main as main_mod

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROGRAM = os.path.join("train", "main.py")
# `python FAULTY_PROGRAM FAULT flags...`: the program with a fault (see faulty_program.py).
FAULTY_PROGRAM = os.path.join("tests", "train", "faulty_program.py")
# A hang guard, not a speed goal: on a loaded 2-core machine one tiny run took over 300 s.
SUBPROCESS_TIMEOUT = 900


# ----------------------------------------------------------------------------- in process


def run_main(*args: str, **run_options) -> int:
    """Parses `args` as the program's flags and runs `main` in this process.

    `run_options` go to `runner.Run` (e.g. `callbacks`). MirroredStrategies reduce through
    one device: the tests build several in this process, where TensorFlow's collective
    all-reduce would reuse its process-wide instance keys.
    """
    run_options.setdefault("cross_device_ops", tf.distribute.ReductionToOneDevice())
    main_mod.FLAGS.unparse_flags()
    try:
        main_mod.FLAGS(["main.py", *args])
        return main_mod.main(["main.py"], **run_options)
    finally:
        main_mod.FLAGS.unparse_flags()
        tf.keras.mixed_precision.set_global_policy("float32")


def error_line(capsys) -> str:
    """The only line written to stderr, which must be an `error: ...` line."""
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    return lines[0]


def mock_data(num_examples: int):
    """``tfds.testing.mock_data``; tfds.testing imports ``dill`` only for pickling tests."""
    try:
        import dill  # noqa: F401
    except ImportError:
        sys.modules.setdefault("dill", types.ModuleType("dill"))
    from tensorflow_datasets import testing  # not imported by `import tensorflow_datasets`

    return testing.mock_data(num_examples=num_examples)


# ----------------------------------------------------------------------------- outputs


def snapshot(directory) -> dict:
    """Every path under `directory`: size, mtime and a hash of its contents."""
    result = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = os.path.join(root, name)
            stat = os.stat(path)
            digest = None
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            result[os.path.relpath(path, directory)] = (stat.st_size, stat.st_mtime_ns, digest)
    return result


def read_history(stage_dir) -> list[dict]:
    """The rows of a stage's `history.csv` (strings, as written)."""
    with open(os.path.join(stage_dir, "history.csv"), newline="") as f:
        return list(csv.DictReader(f))


def history_epochs(stage_dir) -> list[int]:
    """The epochs in a stage's `history.csv`, in order."""
    return [int(row["epoch"]) for row in read_history(stage_dir)]


def optimizer_iterations(model_dir, stage: int = 1) -> int:
    """The optimizer steps a finished stage took."""
    with open(os.path.join(model_dir, f"stage{stage}", "metrics.json")) as f:
        return json.load(f)["steps"]


def digest_line(output: str) -> str:
    """The `final weights sha256` a run printed."""
    (line,) = [line for line in output.splitlines() if line.startswith("final weights sha256 ")]
    return line.split()[-1]


# ----------------------------------------------------------------------------- subprocesses


def program_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def start_program(args, log_path, script=PROGRAM, **env) -> subprocess.Popen:
    """`python script args` (by default the training program) in the background, from the
    repository's root, stdout and stderr into `log_path`."""
    log = open(log_path, "w")
    return subprocess.Popen(
        [sys.executable, script, *args],
        cwd=REPO,
        env=program_env(**env),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def finish(process: subprocess.Popen, log_path) -> str:
    """Waits for `process` (killing it on timeout) and returns its output."""
    try:
        process.wait(timeout=SUBPROCESS_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with open(log_path) as f:
        return f.read()


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start_cluster(
    tmp_path, args_per_worker: list[list[str]], tag: str, script: str | list[str] = PROGRAM
) -> list:
    """One `script` (by default `train/main.py`; a list: one per worker) process per worker
    of a fresh 127.0.0.1 cluster, each with its own TF_CONFIG and TMPDIR (where a
    non-chief's scratch goes); logs `{tag}{index}.log`."""
    scripts = script if isinstance(script, list) else [script] * len(args_per_worker)
    ports = free_ports(len(args_per_worker))
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = []
    for index, (args, worker_script) in enumerate(zip(args_per_worker, scripts, strict=True)):
        tmp = tmp_path / f"{tag}_tmp{index}"
        tmp.mkdir()
        tf_config_value = json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}
        )
        log = tmp_path / f"{tag}{index}.log"
        workers.append(
            start_program(args, log, worker_script, TF_CONFIG=tf_config_value, TMPDIR=str(tmp))
        )
    return workers


def finish_cluster(tmp_path, workers, tag: str) -> list[str]:
    return [finish(worker, tmp_path / f"{tag}{i}.log") for i, worker in enumerate(workers)]


# ----------------------------------------------------------------------------- no network


def offline(monkeypatch, home) -> list[str]:
    """This process as on a machine without a network, with an empty Keras cache: every host
    name fails to resolve (what urllib then raises, as offline), no proxy is set, and `~`
    is `home` (tf_keras' `get_file` reads `~/.keras`, not KERAS_HOME).

    Returns:
        The host names looked up from now on, in order.
    """
    looked_up = []

    def no_network(host, *args, **kwargs):
        looked_up.append(host)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setenv("HOME", str(home))
    (home / ".keras").mkdir()
    return looked_up
