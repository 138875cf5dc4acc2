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


def write_json(path: str, payload: dict) -> None:
    """Writes JSON atomically (a kill never leaves half a file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def read_json(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


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


class TrainingState(tf.keras.callbacks.Callback):
    """Saves model, optimizer and epoch after every epoch, and the epoch's metrics.

    A rerun restores the newest checkpoint and continues with the next epoch; the history
    CSV is cut back to the restored epoch, so no epoch is repeated or skipped in it.
    `tf.train.CheckpointManager` writes a checkpoint's files before the `checkpoint` state
    file that names the latest one, so a kill during a write leaves the previous checkpoint
    as the latest (see `on_epoch_end`). An epoch whose loss is not
    finite is not saved (`nan_epoch` records it).

    Args:
        directory: where checkpoints and `history.csv` go.
        write: False on non-chief workers, which save to a scratch directory instead.
        restore_from: the directory whose checkpoints `attach` restores (`directory` by
            default); non-chief workers restore the chief's checkpoints.
        max_to_keep: checkpoints kept (the newest complete one is all a resume needs).
    """

    def __init__(
        self,
        directory: str,
        write: bool = True,
        restore_from: str | None = None,
        max_to_keep: int = 1,
    ):
        super().__init__()
        self.directory = directory
        self.write = write
        self.restore_from = restore_from or directory
        self.restored: str | None = None  # the checkpoint `attach` restored, if any
        self.max_to_keep = max_to_keep
        self.history_path = os.path.join(directory, "history.csv")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.nan_epoch: int | None = None
        self._manager: tf.train.CheckpointManager | None = None

    def attach(self, model: tf.keras.Model) -> int:
        """Tracks `model` and its optimizer; restores the newest checkpoint if any.

        Returns:
            The number of epochs already done.
        """
        # In the model's strategy scope: built outside it, the optimizer's slots would be
        # plain variables that every replica of a MirroredStrategy updates in turn.
        with model.distribute_strategy.scope():
            model.optimizer.build(model.trainable_variables)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=self.epoch)
        self._manager = tf.train.CheckpointManager(
            checkpoint, os.path.join(self.directory, "checkpoints"), self.max_to_keep
        )
        self.restored = tf.train.latest_checkpoint(os.path.join(self.restore_from, "checkpoints"))
        if self.restored:
            checkpoint.restore(self.restored).assert_existing_objects_matched()
        done = int(self.epoch.numpy())
        rows = self.history()[:done]
        if self.write:
            self._write_history(rows)
        return done

    @property
    def latest_checkpoint(self) -> str | None:
        return self._manager.latest_checkpoint if self._manager else None

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if not all(math.isfinite(float(v)) for v in logs.values()):
            self.nan_epoch = epoch + 1
            self.model.stop_training = True
            return
        # The history row first, the checkpoint second: a kill in between leaves a row
        # beyond the latest checkpoint, which `attach` cuts off (the epoch is trained
        # again). The other order would lose the row of a checkpointed epoch for good.
        if self.write:
            self._write_history([*self.history(), {"epoch": epoch + 1, **logs}])
        self.epoch.assign(epoch + 1)
        # Crash-safe: `CheckpointManager.save` writes the data shards under a temporary
        # name (`ckpt-N_temp/`), merges them into `ckpt-N.index` + `ckpt-N.data-*`, and
        # only then rewrites the `checkpoint` state file, atomically (write a temp file,
        # rename). `latest_checkpoint` comes from that state file, so a kill anywhere in
        # a save leaves the previous, complete checkpoint as the latest; the leftovers of
        # the interrupted save are overwritten by the next save of the same number.
        self._manager.save(checkpoint_number=epoch + 1)

    def history(self) -> list[dict]:
        """The per-epoch metrics saved so far, in order."""
        if not os.path.exists(self.history_path):
            return []
        with open(self.history_path, newline="") as f:
            return [
                {k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()}
                for row in csv.DictReader(f)
            ]

    def _write_history(self, rows: list[dict]) -> None:
        os.makedirs(self.directory, exist_ok=True)
        fields = sorted({k for row in rows for k in row} - {"epoch"})
        tmp = f"{self.history_path}.tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["epoch", *fields])
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.history_path)


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
