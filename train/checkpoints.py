"""A stage's checkpoints: written so that neither a kill nor a full disk breaks the newest
complete one, read back checked, an unreadable one moved aside.

Names: `ckpt-E` after epoch E; `ckpt-E-S` after S steps of epoch E + 1 (a checkpoint inside
an epoch: `--checkpoint_every_steps`, or a preemption). A save writes the checkpoint's files
(TensorFlow writes the data under `<name>_temp/` and merges it into `<name>.index` and
`<name>.data-*`), then names it in the state file `checkpoint` (TensorFlow's format, written
to a temporary file and renamed), then deletes the checkpoints beyond the newest `keep`.
Only a checkpoint the state file names is complete: a kill anywhere in a save leaves the
previous state file, naming the previous checkpoints; a full disk likewise, and the failed
save's files are removed at once (they free the space they took).

Read back (`restore`), each checkpoint is checked before it is used: every tensor is read,
against the checksum TensorFlow stores with it. An unreadable one (truncated, garbled,
missing files) is moved aside to `unreadable/` next to `checkpoints/` (renamed, never
deleted) and the next newest is tried: it is a complete state of an earlier step, with the
history up to it (`outputs.TrainingState`), so falling back loses the steps after it and
nothing else. If none is readable the stage starts over. A checkpoint that reads but does
not fit the model (other flags than the run's) stops the run instead: moving it aside would
lose good training.
"""

import os
import re
import shutil

import tensorflow as tf

from larq_nobn.train import files
from larq_nobn.train.options import ConfigError

STATE_FILE = "checkpoint"
_NAME = re.compile(r"ckpt-(\d+)(?:-(\d+))?")


def name(epochs: int, steps: int = 0) -> str:
    """The checkpoint after `epochs` epochs and `steps` steps of the next one."""
    return f"ckpt-{epochs}-{steps}" if steps else f"ckpt-{epochs}"


def unreadable(prefix: str) -> str | None:
    """What makes the checkpoint at `prefix` unreadable, or None: reads every tensor."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)
    except Exception as error:  # any failure to read the file is the file's
        return files.reason(error)
    return None


class Checkpoints:
    """The checkpoints of `checkpoint` (a `tf.train.Checkpoint`) in `directory`.

    Args:
        directory: where they are written.
        checkpoint: what they hold.
        keep: how many are kept: the newest, and older ones to fall back on.
        size: the bytes a checkpoint takes, when none is on disk yet (for a full disk's
            message); None if unknown.
        older: (an object of `checkpoint` that the checkpoints of an earlier layout lack,
            what they hold instead), or None.
    """

    def __init__(
        self,
        directory: str,
        checkpoint: tf.train.Checkpoint,
        keep: int = 2,
        size=None,
        older: tuple[str, tf.train.Checkpoint] | None = None,
    ):
        self.directory = directory
        self.checkpoint = checkpoint
        self.older = older
        # `restore` creates this counter, so every checkpoint holds one (`write` leaves it).
        checkpoint.save_counter  # noqa: B018
        self.keep = keep
        self.size = size
        self.kept: list[str] = []  # the complete ones in `directory`, oldest first

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    @property
    def latest(self) -> str | None:
        return self.path(self.kept[-1]) if self.kept else None

    # ------------------------------------------------------------------------- write

    def save(self, name: str) -> str:
        """Writes the checkpoint `name` (see the module docstring); returns its prefix.

        Raises:
            DiskFullError: there was no space for it; the previous checkpoints are intact
                and still the newest.
        """
        prefix = self.path(name)
        try:
            os.makedirs(self.directory, exist_ok=True)
            self.checkpoint.write(prefix)
            kept = [*[n for n in self.kept if n != name], name]
            self._write_state(kept[-self.keep :])
        except (OSError, tf.errors.OpError) as error:
            if not files.is_disk_full(error):
                raise
            self._remove(name)
            raise files.DiskFullError(self._disk_full_message()) from None
        dropped, self.kept = kept[: -self.keep], kept[-self.keep :]
        for old in dropped:
            self._remove(old)
        return prefix

    def _write_state(self, names: list[str]) -> None:
        """The state file naming `names` (oldest first), replaced atomically."""
        lines = [f'model_checkpoint_path: "{names[-1]}"']
        lines += [f'all_model_checkpoint_paths: "{n}"' for n in names]
        path = self.path(STATE_FILE)
        tmp = f"{path}.tmp"
        try:
            with open(tmp, "w") as f:
                f.write("\n".join(lines) + "\n")
            os.replace(tmp, path)
        except BaseException:
            files.remove_quietly(tmp)
            raise

    def _remove(self, name: str) -> None:
        """Deletes the files of checkpoint `name`, complete or not."""
        shutil.rmtree(self.path(f"{name}_temp"), ignore_errors=True)
        for path in self._files(self.directory, name):
            files.remove_quietly(path)

    @staticmethod
    def _files(directory: str, name: str) -> list[str]:
        if not os.path.isdir(directory):
            return []
        return [
            os.path.join(directory, f)
            for f in sorted(os.listdir(directory))
            if f == f"{name}.index" or f.startswith(f"{name}.data-")
        ]

    def _disk_full_message(self) -> str:
        size = self.size() if self.size else None
        if self.kept:
            size = sum(os.path.getsize(p) for p in self._files(self.directory, self.kept[-1]))
        free = files.free_bytes(self.directory)
        space = []
        if size:
            space.append(f"a checkpoint takes {files.megabytes(size)}")
        if free is not None:
            space.append(f"{files.megabytes(free)} free")
        where = f" ({', '.join(space)})" if space else ""
        if self.kept:
            then = f"{self.latest} is still the newest checkpoint: free space and rerun"
            then += " the same command to continue from it"
        else:
            then = "no checkpoint of this stage was written yet: free space and rerun"
        return f"no space left on device for a checkpoint in {self.directory}{where}: {then}"

    # ------------------------------------------------------------------------- read

    def restore(self, source: str | None = None, move_bad: bool = True) -> str | None:
        """Restores the newest readable checkpoint of `source` (default: `directory`).

        Unreadable ones are moved aside when `move_bad` (the chief: other workers read the
        chief's checkpoints and leave them alone), and one warning line says what
        happened.

        Returns:
            The prefix restored, or None (no checkpoint, or none readable).

        Raises:
            ConfigError: the newest readable checkpoint does not fit the model.
        """
        source = source or self.directory
        aside = os.path.join(os.path.dirname(os.path.abspath(source)), "unreadable")
        names, notes = self._complete(source, aside if move_bad else None)
        bad = []
        restored = None
        while names:
            candidate = names.pop()
            problem = unreadable(os.path.join(source, candidate))
            if problem is None:
                restored = candidate
                names.append(candidate)
                break
            bad.append((candidate, problem))
            if move_bad:
                for path in self._files(source, candidate):
                    files.move_aside(path, aside)
        if bad:
            (first, problem), others = bad[0], bad[1:]
            what = f"{os.path.join(source, first)} is unreadable ({problem})"
            if others:
                listed = ", ".join(f"{n} ({p})" for n, p in others)
                what = f"{os.path.join(source, first)} ({problem}) and {listed} are unreadable"
            moved = f", moved to {aside}/" if move_bad else ""
            then = f"resuming from {restored}" if restored else "the stage starts over"
            notes.append(f"{what}{moved}; {then}")
        if move_bad:
            for leftover in os.listdir(source) if os.path.isdir(source) else ():
                if leftover.endswith("_temp"):  # shards of an interrupted save
                    shutil.rmtree(os.path.join(source, leftover), ignore_errors=True)
            if bad and names:
                self._write_state(names)
            elif bad:
                files.remove_quietly(os.path.join(source, STATE_FILE))
        if move_bad and source == self.directory:
            self.kept = names
        if notes:
            files.warn("; ".join(notes))
        if restored is None:
            return None
        self._restore(os.path.join(source, restored))
        return os.path.join(source, restored)

    def _restore(self, prefix: str) -> None:
        checkpoint = self.checkpoint
        if self.older is not None:
            new, older = self.older
            if not any(name.startswith(f"{new}/") for name, _ in tf.train.list_variables(prefix)):
                checkpoint = older
        try:
            checkpoint.restore(prefix).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as error:
            raise ConfigError(
                f"{prefix} does not fit this run's model ({files.reason(error)}): rerun "
                "with the flags of the run (config.json) or choose another --model_dir"
            ) from None

    def _complete(self, source: str, aside: str | None) -> tuple[list[str], list[str]]:
        """(names of the complete checkpoints in `source`, oldest first; notes).

        From the state file; if that is unreadable, it is moved to `aside` (if given) and
        the names come from the checkpoint files there are (each is checked when read).
        """
        path = os.path.join(source, STATE_FILE)
        if not os.path.exists(path):
            return [], []
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            names = _state_names(text)
        except (OSError, UnicodeDecodeError, ValueError) as error:
            listed = sorted(
                (m for m in map(_NAME.fullmatch, _index_stems(source)) if m),
                key=lambda m: (int(m.group(1)), int(m.group(2) or 0)),
            )
            moved = ""
            if aside:
                moved = f", moved to {files.move_aside(path, aside)}"
            note = (
                f"{path} is unreadable ({files.reason(error)}){moved}; the checkpoints "
                "are taken from their files"
            )
            return [m.group(0) for m in listed], [note]
        return names, []


def _index_stems(directory: str) -> list[str]:
    return [f[: -len(".index")] for f in os.listdir(directory) if f.endswith(".index")]


def _state_names(text: str) -> list[str]:
    """The checkpoints a state file names, oldest first; ValueError if it is not one."""
    names, latest = [], None
    for line in text.splitlines():
        if not line.strip():
            continue
        match = re.fullmatch(r'\s*(\w+):\s*(".*"|[\d.eE+-]+)\s*', line)
        if match is None:
            raise ValueError(f"not a checkpoint state line: {line[:60]!r}")
        key, value = match.groups()
        if key == "model_checkpoint_path":
            latest = os.path.basename(value.strip('"'))
        elif key == "all_model_checkpoint_paths":
            names.append(os.path.basename(value.strip('"')))
    if latest is None:
        raise ValueError("it names no checkpoint")
    if latest not in names:
        names.append(latest)
    return names
