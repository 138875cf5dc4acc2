"""The files of --model_dir that a run reads back, checked; where a bad one goes; a full disk.

Nothing here imports TensorFlow: `config.Config.check_files` uses it before TensorFlow is.

What the program does when a file it reads back is unreadable (truncated, garbled, not
what it should hold): one line, never a traceback, and per file

- `config.json`: stops (exit 2). It is the only record of the flags the checkpoints were
  trained with; rebuilt from this command's flags it could resume a run with other flags.
- `metrics.json`, `stageN/metrics.json`: stops (exit 2). They say that the run, the
  stage, finished (a finished stage's checkpoints are gone).
- a finished stage's `stageN/model.keras`: stops (exit 2), `models.read_weights`.
- `stageN/checkpoints/ckpt-*`: moves it aside and resumes from the newest readable one,
  or starts the stage over if none is left (`checkpoints.Checkpoints.restore`); a warning.
- `stageN/checkpoints/checkpoint`, the state file naming the complete checkpoints: moves
  it aside and takes the checkpoints from their files (each is checked when read).
- `stageN/history.csv`: moves it aside and rebuilds it from the checkpoint, or from the
  finished stage's `metrics.json`, which hold the same rows (`outputs.TrainingState`).

A file moved aside goes to `unreadable/` in its stage's directory, renamed, never deleted
(`move_aside`). A stop leaves the run directory as it was: the fallbacks are taken where
they lose nothing the bad file had not lost already.
"""

import errno
import json
import os
import sys

from larq_nobn.train.options import ConfigError

# Both mean that the disk (or the user's share of it) is full.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# TensorFlow's file errors end with the C library's text of the errno.
DISK_FULL_TEXTS = tuple(os.strerror(number) for number in DISK_FULL_ERRNOS)


class TrainingError(RuntimeError):
    """Training stopped for a reason the user must see (one line)."""


class DiskFullError(TrainingError):
    """A write failed for lack of space; what was written before is intact."""


def warn(message: str) -> None:
    """A recovery the user must know of: one `warning:` line on stderr."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def reason(error: BaseException) -> str:
    """An exception's first line, short: what a one-line message quotes."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text[:200]


def write_json(path: str, payload: dict) -> None:
    """Writes JSON atomically (a kill or a full disk never leaves half a file)."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


def remove_quietly(path: str) -> None:
    """Removes a file if it is there (a temporary one a failed write left)."""
    try:
        os.remove(path)
    except OSError:
        pass


def read_json(path: str, advice: str) -> dict | None:
    """The JSON object in `path`, or None if there is no such file.

    Raises:
        ConfigError: the file is not a readable JSON object; the message names it, says
            what is wrong and `advice` (what to do).
    """
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ConfigError(f"{path} is unreadable ({reason(error)}): {advice}") from None
    if not isinstance(payload, dict):
        raise ConfigError(f"{path} holds no JSON object: {advice}")
    return payload


def move_aside(path: str, folder: str | None = None) -> str:
    """Moves `path` (a file or a directory) into `folder` (default `unreadable/` next to
    it), under its own name or, if taken, with `.2`, `.3`, ... after it; returns where."""
    folder = folder or os.path.join(os.path.dirname(path), "unreadable")
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, os.path.basename(path))
    number = 1
    while os.path.lexists(target):
        number += 1
        target = os.path.join(folder, f"{os.path.basename(path)}.{number}")
    os.replace(path, target)
    return target


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` (an OSError, or a TensorFlow file error) says the disk is full."""
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        return True
    return type(error).__name__ == "ResourceExhaustedError" and any(
        text in str(error) for text in DISK_FULL_TEXTS
    )


def free_bytes(path: str) -> int | None:
    """The bytes free for this user on the file system of `path` (or of its parent)."""
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        stat = os.statvfs(path or ".")
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def check_writable_directory(path: str, flag: str) -> None:
    """Raises ConfigError unless `path` is a directory this process can write in, or can be
    made one (its nearest existing ancestor is a writable directory)."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        if existing == os.path.abspath(path):
            raise ConfigError(f"{flag} {path} is a file, not a directory")
        raise ConfigError(f"{flag} {path} cannot be a directory: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == os.path.abspath(path) else f" ({existing} is not)"
        raise ConfigError(f"{flag} {path} is not writable{where}: choose another {flag}")
