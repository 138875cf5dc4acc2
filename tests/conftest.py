"""Test-session setup: Keras 2 and two logical CPU devices (for tf.distribute tests)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import larq_nobn  # noqa: E402,F401  (selects Keras 2 before anything else imports TF)
from larq_nobn.memory import reuse_freed_memory  # noqa: E402

reuse_freed_memory()  # as the program does (see larq_nobn.memory)

# isort: split
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)


@pytest.fixture(autouse=True)
def _clear_keras_session():
    tf.keras.backend.clear_session()
    yield
