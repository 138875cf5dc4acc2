"""The tf.data assembly of every source: per-epoch keyed shuffles and augmentation, batches."""

import tensorflow as tf

from larq_nobn.train.data.source import DatasetError, DatasetInfo, Source

AUTOTUNE = tf.data.AUTOTUNE
_GRAPH_SEED = 1  # graph-level seed of the per-epoch pipelines


def assemble(
    name: str,
    src: Source,
    *,
    global_batch_size: int,
    seed: int,
    input_context: tf.distribute.InputContext | None,
    stream: int,
    first_epoch: int,
    epochs: int,
    first_step: int = 0,
) -> tuple[tf.data.Dataset, tf.data.Dataset, DatasetInfo]:
    """(train, test, info) of a source, as `data.load` returns them (its arguments)."""
    batch_size = global_batch_size
    num_pipelines = 1
    train = src.train
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
        num_pipelines = input_context.num_input_pipelines
        if num_pipelines > 1 and not src.train_sharded:
            train = train.shard(num_pipelines, input_context.input_pipeline_id)
    if src.train_examples // num_pipelines < batch_size:
        raise DatasetError(
            f"{name}: {src.train_examples} train examples over {num_pipelines} input pipeline(s) "
            f"cannot fill one batch of {batch_size} (train batches drop the remainder)"
        )

    def as_label(label: tf.Tensor) -> tf.Tensor:
        return tf.cast(label, tf.int32)

    test = src.test
    if src.cache:
        train, test = train.cache(), test.cache()

    buffer = src.shuffle_buffer or max(1, -(-src.train_examples // num_pipelines))
    stream_key = tf.constant([seed, stream], tf.int64)

    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        # Traced in a graph of its own: its graph-level seed (the first of the shuffle's two
        # seeds) is fixed here, so the order depends on the key below only, not on the
        # process's global seed (which `tf.random.set_seed` would otherwise lend it; a
        # global seed of 0 would even fail with a tensor op seed).
        tf.random.set_seed(_GRAPH_SEED)
        key = tf.random.experimental.stateless_fold_in(stream_key, epoch)
        order_seed = tf.random.stateless_uniform([], key, minval=None, maxval=None, dtype=tf.int64)
        examples = train.shuffle(buffer, seed=order_seed, reshuffle_each_iteration=False)
        # Each example's augmentation seed: the epoch's key folded with its position, so
        # parallel maps stay deterministic. The batches a resumed run has trained on are
        # left out before the map, their positions kept.
        examples = examples.enumerate()
        if first_step:
            skipped = tf.where(epoch == first_epoch, first_step * batch_size, 0)
            examples = examples.skip(tf.cast(skipped, tf.int64))
        examples = examples.map(
            lambda index, example: (
                src.train_map(example[0], tf.random.experimental.stateless_fold_in(key, index)),
                as_label(example[1]),
            ),
            num_parallel_calls=AUTOTUNE,
        )
        return examples.batch(batch_size, drop_remainder=True)

    train = tf.data.Dataset.range(first_epoch, first_epoch + epochs).flat_map(one_epoch)
    train = train.prefetch(AUTOTUNE)

    test = test.map(lambda x, y: (src.test_map(x), as_label(y)), num_parallel_calls=AUTOTUNE)
    test = test.batch(batch_size, drop_remainder=False).prefetch(AUTOTUNE)

    info = DatasetInfo(
        name=name,
        num_classes=src.num_classes,
        image_shape=(src.image_size, src.image_size, 3),
        train_examples=src.train_examples,
        test_examples=src.test_examples,
        mean=src.mean,
        std=src.std,
    )
    return train, test, info
