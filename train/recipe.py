"""The paper's training recipe: schedule, optimizer (AGC, weight decay, Adam), losses.

Numbers come from the reference scripts of "BNN - BN = ?" (VITA-Group/BNN_NoBN,
`train.py` and `script/*.sh`).
"""

import tensorflow as tf

import larq_nobn
from larq_nobn.registry import keras_serializable
from larq_nobn.train.hyperparameters import (  # noqa: F401  (recipe.X, as before)
    ADAM_EPSILON,
    AGC_CLIP,
    AGC_EPS,
    AGC_EXCLUDE,
    AGC_UNITS,
    BATCH_SIZE,
    DECAY_EXCLUDE,
    FINE_TUNE_LEARNING_RATE,
    FULL_PRECISION_DECAY_EXCLUDE,
    FULL_PRECISION_LEARNING_RATE,
    FULL_PRECISION_MOMENTUM,
    FULL_PRECISION_WEIGHT_DECAY,
    LABEL_SMOOTHING,
    LEARNING_RATE,
    LOSSES,
    WEIGHT_DECAY,
)


@keras_serializable("larq_nobn_train>LinearDecay")  # its name in older files
class LinearDecay(tf.keras.optimizers.schedules.LearningRateSchedule):
    """`initial * (1 - step / total_steps)`, reaching 0 at the end of the run (per step).

    The reference steps a `LambdaLR(1 - epoch / epochs)` once per epoch; this is its
    per-step version.
    """

    def __init__(self, initial_learning_rate: float, total_steps: int):
        self.initial_learning_rate = initial_learning_rate
        self.total_steps = total_steps

    def __call__(self, step):
        progress = tf.cast(step, tf.float32) / float(self.total_steps)
        return self.initial_learning_rate * tf.maximum(1.0 - progress, 0.0)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "total_steps": self.total_steps,
        }


def optimizer(
    learning_rate: float,
    total_steps: int,
    agc_clip: float,
    weight_decay: float = 0.0,
    fused: bool | None = None,
) -> tf.keras.optimizers.Optimizer:
    """The reference's optimizer step for the zoo models.

    `torch.optim.Adam` (epsilon after the bias correction) with the linear schedule and
    coupled L2 `weight_decay` on the reference's set (`DECAY_EXCLUDE` spares the rest),
    wrapped in AGC (clip `agc_clip`, units as in the reference's layouts) unless
    `agc_clip` is 0. Order, as in the reference: AGC clips the data gradient, then Adam
    adds `weight_decay * W` and updates. `fused` is `TorchAdam`'s (None: the acceleration
    setting's choice).
    """
    adam = larq_nobn.TorchAdam(
        LinearDecay(learning_rate, total_steps),
        epsilon=ADAM_EPSILON,
        weight_decay=weight_decay,
        exclude_from_weight_decay=DECAY_EXCLUDE,
        fused=fused,
    )
    if agc_clip == 0:
        return adam
    return larq_nobn.AGC(
        adam, clip_factor=agc_clip, eps=AGC_EPS, exclude=AGC_EXCLUDE, units=AGC_UNITS
    )


def full_precision_optimizer(
    learning_rate: float, total_steps: int, weight_decay: float = FULL_PRECISION_WEIGHT_DECAY
) -> tf.keras.optimizers.Optimizer:
    """The recipe of the full-precision applications the program trains as teachers.

    SGD with Nesterov momentum 0.9, cosine decay to 0 over the run (per step), and Keras'
    weight decay (`W -= lr * weight_decay * W` each step, outside the momentum) on kernels
    only. No AGC: these networks have batch normalization.
    """
    sgd = tf.keras.optimizers.SGD(
        tf.keras.optimizers.schedules.CosineDecay(learning_rate, total_steps),
        momentum=FULL_PRECISION_MOMENTUM,
        nesterov=True,
        weight_decay=weight_decay or None,
    )
    if weight_decay:
        sgd.exclude_from_weight_decay(var_names=list(FULL_PRECISION_DECAY_EXCLUDE))
    return sgd


@keras_serializable("larq_nobn_train>SparseSmoothedCrossEntropy")  # in older files
class SparseSmoothedCrossEntropy(tf.keras.losses.Loss):
    """Cross-entropy with label smoothing on integer labels and logits."""

    def __init__(self, num_classes: int, label_smoothing: float = LABEL_SMOOTHING, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        one_hot = tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), self.num_classes)
        return tf.keras.losses.categorical_crossentropy(
            one_hot, y_pred, from_logits=True, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "label_smoothing": self.label_smoothing,
        }


def distribution_loss(teacher_logits: tf.Tensor, student_logits: tf.Tensor) -> tf.Tensor:
    """The reference's `kd` loss per example: `-sum(softmax(teacher) * log_softmax(student))`."""
    teacher_probs = tf.nn.softmax(tf.cast(teacher_logits, tf.float32))
    log_probs = tf.nn.log_softmax(tf.cast(student_logits, tf.float32))
    return -tf.reduce_sum(teacher_probs * log_probs, axis=-1)


class Distillation(tf.keras.Model):
    """Trains `student` against a frozen `teacher`'s softmax (the reference's `kd` loss).

    Compile it without a loss: `distribution_loss` replaces it (tracked as "loss"), while
    compiled metrics such as accuracy still compare the student's logits with the labels.

    The teacher is not a tracked part of the model: its weights are in none of the
    model's weight lists, so checkpoints of the model hold the student (and optimizer)
    only, and AGC never sees them. It runs in inference mode.
    """

    def __init__(self, student: tf.keras.Model, teacher: tf.keras.Model, **kwargs):
        super().__init__(name=f"{student.name}_distilled", **kwargs)
        self.student = student
        teacher.trainable = False
        # Bypasses Keras' attribute tracking (see above); a frozen input, not a layer.
        object.__setattr__(self, "teacher", teacher)
        self.loss_tracker = tf.keras.metrics.Mean(name="loss")

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    @property
    def metrics(self):
        return [self.loss_tracker, *super().metrics]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None):
        per_example = distribution_loss(self.teacher(x, training=False), y_pred)
        # Per replica, divided by the global batch: the sum over replicas is the mean.
        loss = tf.nn.compute_average_loss(per_example)
        if self.student.losses:  # a user's regularizers; the recipe's decay is Adam's
            loss += tf.nn.scale_regularization_loss(tf.add_n(self.student.losses))
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        self.loss_tracker.update_state(loss * replicas)
        return loss


def loss(name: str, num_classes: int) -> tf.keras.losses.Loss:
    """The Keras loss for `ce` and `ls` (`kd` is `Distillation`, which uses `ce` for eval)."""
    if name == "ls":
        return SparseSmoothedCrossEntropy(num_classes)
    return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
