"""The same few training steps under any `tf.distribute` strategy: `fit` and a custom
training loop of a small ScaledWS model compiled with the recipe's optimizer (AGC around
TorchAdam, with a clipnorm). Imported by the tests; run as a script, it is one worker of
a multi-worker cluster (TF_CONFIG) and writes its weights to `argv[1]`."""

import json
import os
import sys

import numpy as np
import tensorflow as tf

import larq_nobn
from larq_nobn.train import recipe

GLOBAL_BATCH = 8
STEPS = 2
_RNG = np.random.default_rng(11)
X = _RNG.normal(size=(GLOBAL_BATCH * STEPS, 6, 6, 2)).astype(np.float32)
Y = _RNG.integers(0, 3, size=(GLOBAL_BATCH * STEPS,)).astype(np.int32)


def _model() -> tf.keras.Model:
    model = tf.keras.Sequential(
        [
            tf.keras.Input((6, 6, 2)),
            larq_nobn.ScaledWSConv2D(4, 3, padding="same", name="conv"),
            larq_nobn.LearnableBias(name="shift"),
            tf.keras.layers.GlobalAveragePooling2D(),
            tf.keras.layers.Dense(3, name="fc"),
        ]
    )
    rng = np.random.default_rng(12)
    model.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in model.weights])
    return model


def _optimizer() -> tf.keras.optimizers.Optimizer:
    optimizer = recipe.optimizer(0.05, total_steps=10, agc_clip=0.02, weight_decay=1e-3)
    optimizer.clipnorm = 0.05
    return optimizer


def _dataset(strategy):
    """Global batch k is examples [8k, 8k + 8) whatever the replicas: each input pipeline
    takes every n-th per-replica batch, and replicas of one pipeline take them in turn."""

    def per_pipeline(context: tf.distribute.InputContext):
        batch = context.get_per_replica_batch_size(GLOBAL_BATCH)
        dataset = tf.data.Dataset.from_tensor_slices((X, Y)).batch(batch)
        return dataset.shard(context.num_input_pipelines, context.input_pipeline_id).repeat()

    return strategy.distribute_datasets_from_function(per_pipeline)


def train_with_fit(strategy) -> list[np.ndarray]:
    with strategy.scope():
        model = _model()
        model.compile(
            optimizer=_optimizer(),
            loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    model.fit(_dataset(strategy), epochs=1, steps_per_epoch=STEPS, verbose=0)
    assert model.optimizer.iterations.numpy() == STEPS
    return model.get_weights()


def train_with_loop(strategy) -> list[np.ndarray]:
    with strategy.scope():
        model = _model()
        optimizer = _optimizer()
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=tf.keras.losses.Reduction.NONE
    )

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            per_example = loss_fn(y, model(x, training=True))
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=GLOBAL_BATCH)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))

    @tf.function
    def step(iterator):
        strategy.run(replica_step, args=next(iterator))

    iterator = iter(_dataset(strategy))
    for _ in range(STEPS):
        step(iterator)
    assert optimizer.iterations.numpy() == STEPS
    return model.get_weights()


def main(output: str) -> None:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    assert strategy.num_replicas_in_sync == 2
    fit, loop = train_with_fit(strategy), train_with_loop(strategy)
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    np.savez(f"{output}{index}.npz", *fit, *loop)


if __name__ == "__main__":
    main(sys.argv[1])
