"""What a run leaves in --model_dir: checkpoints, per-epoch history, metrics, curves, the
TFLite model."""

import csv
import hashlib
import json
import math
import os
import shutil

import numpy as np
import tensorflow as tf

from larq_nobn.train import checkpoints, files, preemption


def weights_sha256(model: tf.keras.Model) -> str:
    """A digest of the model's weights (values, shapes and dtypes, in order)."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        weight = np.ascontiguousarray(weight)
        digest.update(f"{weight.dtype}{weight.shape}".encode())
        digest.update(weight.tobytes())
    return digest.hexdigest()


def remove_checkpoints(stage_dir: str) -> None:
    """Deletes a finished stage's checkpoints (its model stays)."""
    shutil.rmtree(os.path.join(stage_dir, "checkpoints"), ignore_errors=True)


def link_or_copy(source: str, destination: str) -> None:
    """`destination` becomes the same file as `source`: a hard link (no second copy on
    disk) where the file system allows one, else a copy."""
    tmp = f"{destination}.tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, destination)


def read_history(path: str) -> list[dict]:
    """The rows of a `history.csv` (none if there is no such file), checked: an `epoch`
    column first, epochs 1, 2, ... in order, numbers in every field.

    Raises:
        ValueError: the file is not such a history (the message says why).
    """
    if not os.path.exists(path):
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or reader.fieldnames[0] != "epoch":
                raise ValueError("its first column is not epoch")
            rows = []
            for number, row in enumerate(reader, 1):
                if None in row or None in row.values():
                    raise ValueError(f"row {number} has another number of fields")
                parsed = {k: int(v) if k == "epoch" else float(v) for k, v in row.items() if v}
                if parsed.get("epoch") != number:
                    raise ValueError(f"row {number} is not epoch {number}")
                rows.append(parsed)
    except (UnicodeDecodeError, csv.Error) as error:
        raise ValueError(files.reason(error)) from None
    return rows


def write_history(path: str, rows: list[dict]) -> None:
    """Writes `rows` as a `history.csv`, atomically."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fields = sorted({k for row in rows for k in row} - {"epoch"})
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["epoch", *fields])
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        files.remove_quietly(tmp)
        raise


def reconcile_history(path: str, rows: list[dict], source: str) -> None:
    """Makes the `history.csv` at `path` hold `rows`, those of `source` (a checkpoint, a
    finished stage's metrics.json): one that is behind or ahead is rewritten, an
    unreadable one moved aside first, with a warning line."""
    try:
        if read_history(path) == rows:
            return
    except ValueError as error:
        moved = files.move_aside(path)
        epochs = {0: "its header (no epoch is done)", 1: "epoch 1"}.get(
            len(rows), f"epochs 1-{len(rows)}"
        )
        files.warn(
            f"{path} is unreadable ({error}), moved to {moved}; rebuilt {epochs} from {source}"
        )
    write_history(path, rows)


def finished_history(stage_dir: str, done: dict, write: bool) -> list[dict]:
    """The history of a finished stage whose metrics.json holds `done`: the rows it holds
    (`history.csv` reconciled with them when `write`), or, written before metrics.json held
    them, the rows of `history.csv` (none, with a warning line, if it is unreadable)."""
    path = os.path.join(stage_dir, "history.csv")
    rows = done.get("history")
    if rows is not None:
        if write:
            reconcile_history(path, rows, os.path.join(stage_dir, "metrics.json"))
        return rows
    try:
        return read_history(path)
    except ValueError as error:
        files.warn(f"{path} is unreadable ({error}); the curves leave out its stage")
        return []


def _is_additive(metric: tf.keras.metrics.Metric) -> bool:
    """Whether the metric's state is sums (Keras' means are a total and a count)."""
    return isinstance(metric, (tf.keras.metrics.Mean, tf.keras.metrics.Sum))


class TrainingState(tf.keras.callbacks.Callback):
    """Checkpoints a stage's training (`checkpoints.Checkpoints`) and keeps its history.

    Each epoch ends with a checkpoint `ckpt-E`, then its row of `history.csv`. A checkpoint
    holds the model, the optimizer, the epochs and steps done and the history rows up to
    it (`record`): it is the one account of where the stage stands. `attach` restores the
    newest readable one and makes `history.csv` hold its rows: a kill between the two
    writes of an epoch's end leaves nothing to repair by hand, and an unreadable
    `history.csv` is moved aside and rebuilt, with a warning line.

    Inside an epoch it also checkpoints every `every_steps` steps (`ckpt-E-S`), and at the
    end of a step in which a SIGTERM or SIGINT arrived (`preemption`), after which it raises
    `preemption.Stopped`; in the last step of an epoch the signal waits for the epoch's end
    (its test-set metrics and `ckpt-E`). Such a checkpoint also holds the sums of the
    epoch's train metrics so far: resumed from it (`resumed_steps`), the epoch continues
    where it stopped, the sums are added back after its first step, and its row is an
    uninterrupted run's (bit for bit on one replica; over several, up to the rounding of
    the replicas' partial sums). Multi-worker runs agree on each stop and each failed save
    (`agree`), so that every worker stops after the same step.

    An epoch or a step whose loss is not finite is not saved (`nan_epoch` records it).

    Args:
        directory: where checkpoints and `history.csv` go.
        write: False on non-chief workers, which save to a scratch directory instead.
        restore_from: the directory whose checkpoints `attach` restores (`directory` by
            default); non-chief workers restore the chief's checkpoints.
        max_to_keep: checkpoints kept: the newest, and older ones to fall back on if it
            cannot be read.
        steps_per_epoch: the stage's steps per epoch (needed for checkpoints inside one).
        every_steps: also checkpoint every this many steps of the stage (None: at the
            epochs' ends only).
        agree: sums a number over the workers (`rundir.RunDirectory.agree`); None for a
            one-worker run.
    """

    def __init__(
        self,
        directory: str,
        write: bool = True,
        restore_from: str | None = None,
        max_to_keep: int = 2,
        steps_per_epoch: int | None = None,
        every_steps: int | None = None,
        agree=None,
    ):
        super().__init__()
        self._supports_tf_logs = True  # no host copy of every step's logs on its account
        self.directory = directory
        self.write = write
        self.restore_from = restore_from or directory
        self.restored: str | None = None  # the checkpoint `attach` restored, if any
        self.max_to_keep = max_to_keep
        self.steps_per_epoch = steps_per_epoch
        self.every_steps = every_steps
        self.agree = agree or (lambda value: value)
        self.history_path = os.path.join(directory, "history.csv")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.record = tf.Variable("{}", dtype=tf.string, trainable=False, name="record")
        self.nan_epoch: int | None = None
        self.resumed_steps = 0  # steps of the next epoch done at `attach`
        self.rows: list[dict] = []
        self._manager: checkpoints.Checkpoints | None = None
        self._epoch = 0  # the epoch being trained (0-based) and its steps done
        self._steps = 0
        self._sums: dict | None = None  # metric sums to add back after the first step
        self._resumed_epoch: int | None = None  # the epoch `resumed_steps` are of
        self._last_step_logs: dict | None = None

    def attach(self, model: tf.keras.Model) -> int:
        """Tracks `model` and its optimizer; restores the newest readable checkpoint.

        Returns:
            The number of epochs already done (`resumed_steps`: steps of the next one).
        """
        # In the model's strategy scope: built outside it, the optimizer's slots would be
        # plain variables that every replica of a MirroredStrategy updates in turn.
        with model.distribute_strategy.scope():
            model.optimizer.build(model.trainable_variables)
        checkpoint = tf.train.Checkpoint(
            model=model,
            optimizer=model.optimizer,
            epoch=self.epoch,
            step=self.step,
            record=self.record,
        )
        self._manager = checkpoints.Checkpoints(
            os.path.join(self.directory, "checkpoints"),
            checkpoint,
            self.max_to_keep,
            size=lambda: _bytes(model.variables) + _bytes(model.optimizer.variables),
            # Checkpoints written before they held `step` and `record` (and history.csv
            # was written first): model, optimizer and epochs.
            older=(
                "record",
                tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=self.epoch),
            ),
        )
        self.restored = self._manager.restore(
            os.path.join(self.restore_from, "checkpoints"), move_bad=self.write
        )
        record = json.loads(self.record.numpy().decode())
        self._sums = record.get("sums")
        done, self.resumed_steps = int(self.epoch.numpy()), int(self.step.numpy())
        self._resumed_epoch = done if self.resumed_steps else None
        if self.restored and "history" not in record:  # a checkpoint of the older layout
            record["history"] = _older_history(self.restore_from, done)
        self.rows = record.get("history", [])
        if self.write:
            source = self.restored or "nothing (no readable checkpoint)"
            reconcile_history(self.history_path, self.rows, source)
        return done

    @property
    def latest_checkpoint(self) -> str | None:
        return self._manager.latest if self._manager else None

    def history(self) -> list[dict]:
        """The per-epoch metrics saved so far, in order."""
        if self._manager is not None:
            return list(self.rows)
        return read_history(self.history_path)

    # ------------------------------------------------------------------------- callbacks

    def on_train_begin(self, logs=None):
        signum = self.agree(preemption.requested() or 0)
        if signum:  # noted outside `fit` by a worker of a multi-worker run
            raise preemption.Stopped(
                preemption.requested(), f"before training (checkpoint {self._run_checkpoint()})"
            )

    def on_epoch_begin(self, epoch, logs=None):
        resumed = epoch == self._resumed_epoch
        self._epoch, self._steps = epoch, self.resumed_steps if resumed else 0
        self._resumed_epoch = None

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        if self._sums is not None:
            self._add_sums(logs)
        steps = self.steps_per_epoch
        inside = steps is not None and self._steps < steps
        due = (
            inside
            and self.every_steps is not None
            and (self._epoch * steps + self._steps) % self.every_steps == 0
        )
        stop = inside and self.agree(preemption.requested() or 0)
        if due or stop:
            self._save_step(logs)
        if stop:
            where = f"after step {self._steps} of {steps} of epoch {self._epoch + 1}"
            raise preemption.Stopped(
                preemption.requested(), f"{where} (checkpoint {self._run_checkpoint()})"
            )

    def on_epoch_end(self, epoch, logs=None):
        logs = {**(logs or {}), **(self._last_step_logs or {})}
        self._last_step_logs = None
        if not all(math.isfinite(float(v)) for v in logs.values()):
            self.nan_epoch = epoch + 1
            self.model.stop_training = True
            return
        # The checkpoint first, the history row second: the checkpoint holds the row, and
        # `attach` writes it into history.csv if a kill came between the two.
        self.rows.append({"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}})
        self._save(epoch + 1, 0, sums=None, history=True)
        if self.agree(preemption.requested() or 0):
            raise preemption.Stopped(
                preemption.requested(),
                f"after epoch {epoch + 1} (checkpoint {self._run_checkpoint()})",
            )

    # ------------------------------------------------------------------------- saving

    def _save_step(self, logs) -> None:
        """A checkpoint inside the epoch, unless the step's loss is not finite."""
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            return
        sums = {
            metric.name: [np.asarray(v.numpy()).tolist() for v in metric.variables]
            for metric in self.model.metrics
            if _is_additive(metric)
        }
        self._save(self._epoch, self._steps, sums=sums, history=False)

    def _save(self, epochs: int, steps: int, sums: dict | None, history: bool) -> None:
        """Checkpoint (and history.csv); every worker stops if one could not write."""
        self.epoch.assign(epochs)
        self.step.assign(steps)
        record = {"history": self.rows}
        if sums is not None:
            record["sums"] = sums
        self.record.assign(json.dumps(record))
        error = None
        try:
            self._manager.save(checkpoints.name(epochs, steps))
            if history and self.write:
                self._write_history(self.rows)
        except files.DiskFullError as full:
            error = full
        except OSError as failure:
            if not files.is_disk_full(failure):
                raise
            error = files.DiskFullError(
                f"no space left on device for {self.history_path}: "
                f"{self.latest_checkpoint} holds its rows; free space and rerun to continue"
            )
        if self.agree(1 if error else 0):
            raise error or files.TrainingError(
                "another worker could not write its checkpoint (no space left on device)"
            )

    def _run_checkpoint(self) -> str:
        """The newest checkpoint in the run's directory (a non-chief's are in scratch)."""
        if self.latest_checkpoint is None:
            return self.restored or "none yet"
        name = os.path.basename(self.latest_checkpoint)
        return os.path.join(self.restore_from, "checkpoints", name)

    def _write_history(self, rows: list[dict]) -> None:
        write_history(self.history_path, rows)

    def _add_sums(self, logs) -> None:
        """Adds the resumed epoch's metric sums to the first step's (see the class)."""
        sums, self._sums = self._sums, None
        pairs, metrics = [], []
        for metric in self.model.metrics:
            saved = sums.get(metric.name)
            if not _is_additive(metric) or saved is None or len(saved) != len(metric.variables):
                continue
            pairs += zip(metric.variables, saved, strict=True)
            metrics.append(metric)

        def add():
            # Metric variables are summed over the replicas when read: the sums go to one.
            first = tf.distribute.get_replica_context().replica_id_in_sync_group == 0
            for variable, value in pairs:
                value = tf.cast(value, variable.dtype)
                variable.assign_add(tf.where(first, value, tf.zeros_like(value)))

        self.model.distribute_strategy.run(add)
        updated = {metric.name: metric.result() for metric in metrics}
        if logs is not None:
            logs.update(updated)  # the logs Keras goes on with, where it shares them
        if self._steps == self.steps_per_epoch:  # the epoch's logs are this step's
            self._last_step_logs = {k: float(v) for k, v in updated.items()}


def _older_history(restore_from: str, done: int) -> list[dict]:
    """The rows of a checkpoint of the older layout, which history.csv held (cut to the
    checkpoint's epochs); raises TrainingError if it is unreadable."""
    path = os.path.join(restore_from, "history.csv")
    try:
        return read_history(path)[:done]
    except ValueError as error:
        raise files.TrainingError(
            f"{path} is unreadable ({error}), and the checkpoint, of an earlier version, does "
            "not hold its rows: restore it or remove it (the earlier epochs' rows are lost)"
        ) from None


def _bytes(variables) -> int:
    return sum(v.shape.num_elements() * v.dtype.size for v in variables)


def plot_curves(histories: dict[int, list[dict]], path: str):
    """Loss and accuracy, train and test, over the epochs of every stage, as a PNG.

    Drawn on a `matplotlib.figure.Figure` of its own (no pyplot, no global backend).

    Args:
        histories: per stage, the rows of its `history.csv` (`TrainingState.history`).
        path: where to write the PNG.

    Returns:
        The `Figure` written: a loss and an accuracy panel.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    offset = 0
    for stage, rows in sorted(histories.items()):
        epochs = [offset + row["epoch"] for row in rows]
        for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
            for prefix, style in (("", "-"), ("val_", "--")):
                values = [row.get(prefix + metric, math.nan) for row in rows]
                split = "test" if prefix else "train"
                ax.plot(epochs, values, style, marker=".", label=f"stage {stage} {split}")
        offset = epochs[-1] if epochs else offset
        if len(histories) > 1:
            for ax in axes:
                ax.axvline(offset, color="grey", linewidth=0.5)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig


def export_tflite(student: tf.keras.Model, path: str) -> None:
    """The final model as a larq-compute-engine flatbuffer (WS folded into the kernels)."""
    from larq_nobn import export

    flatbuffer = export.convert(student)
    with open(path, "wb") as f:
        f.write(flatbuffer)
    counts = export.op_counts(flatbuffer)
    print(f"TFLite model: {path} ({counts['LceBconv2d']} binary convolutions)")
