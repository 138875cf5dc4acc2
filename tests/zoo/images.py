"""Real images for the zoo's tests: scikit-learn's offline digits."""

import numpy as np
import tensorflow as tf


def digits(size: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits as RGB images in [-1, 1], and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images.astype("float32") / 16.0)[..., None]
    x = tf.image.resize(x, [size, size], method="bilinear").numpy()
    return np.repeat(x * 2.0 - 1.0, 3, axis=-1), data.target
