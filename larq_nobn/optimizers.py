"""Adaptive gradient clipping (AGC) as a wrapper around any tf-keras optimizer."""

import re
from collections.abc import Callable, Sequence

import tensorflow as tf

from larq_nobn.unitwise import unitwise_norm

ExcludeType = None | str | Sequence[str] | Callable[[tf.Variable], bool]

_MIN_GRAD_NORM = 1e-6


def adaptive_clip(grad: tf.Tensor, weight: tf.Tensor, clip_factor: float, eps: float) -> tf.Tensor:
    """Clips `grad` unit-wise to `clip_factor * max(unitwise_norm(weight), eps)`.

    Where `unitwise_norm(grad)` exceeds that bound the unit's gradient is rescaled to it,
    `grad * max_norm / max(unitwise_norm(grad), 1e-6)`; elsewhere it is kept.

    Args:
        grad: the gradient of `weight`.
        weight: the variable (or its value).
        clip_factor: the largest allowed ratio of gradient norm to weight norm.
        eps: the smallest weight norm, so that zero-initialized weights can move.

    Returns:
        The clipped gradient.
    """
    weight = tf.cast(tf.convert_to_tensor(weight), grad.dtype)
    max_norm = clip_factor * tf.maximum(unitwise_norm(weight), eps)
    grad_norm = unitwise_norm(grad)
    # One factor per unit (1 where the unit is not clipped), then one multiplication of the
    # gradient: the same values as selecting between `grad` and the rescaled gradient
    # element by element, in one pass over the gradient instead of three.
    factor = tf.where(
        grad_norm > max_norm,
        max_norm / tf.maximum(grad_norm, _MIN_GRAD_NORM),
        tf.ones_like(grad_norm),
    )
    return grad * factor


def _exclude_predicate(exclude: ExcludeType) -> Callable[[tf.Variable], bool]:
    if exclude is None:
        return lambda variable: False
    if callable(exclude):
        return exclude
    patterns = [exclude] if isinstance(exclude, str) else exclude
    if not isinstance(patterns, Sequence) or not all(isinstance(p, str) for p in patterns):
        raise TypeError(
            "`exclude` must be None, a regex string, a list of regex strings or a callable "
            f"taking a variable and returning a bool; got {exclude!r}."
        )
    try:
        compiled = [re.compile(p) for p in patterns]
    except re.error as error:
        raise ValueError(f"`exclude` holds an invalid regular expression: {error}.") from error
    return lambda variable: any(p.search(variable.name) for p in compiled)


@tf.keras.utils.register_keras_serializable(package="larq_nobn")
class AdaptiveGradientClipping(
    tf.__internal__.tracking.DelegatingTrackableMixin, tf.keras.optimizers.Optimizer
):
    """Adaptive gradient clipping (AGC) around a tf-keras optimizer.

    Before the inner optimizer's update, each output unit's gradient is clipped relative to
    the norm of the unit's weights (see `adaptive_clip`). Under `tf.distribute` the gradients
    are summed across replicas first, so the clip sees the global gradient. The wrapper owns
    no state: `iterations`, the learning rate (or schedule) and the slot variables are the
    inner optimizer's, and checkpoints have the inner optimizer's format.

    ```python
    model.compile(
        optimizer=AGC(tf.keras.optimizers.Adam(5e-4), clip_factor=0.02, exclude="dense"),
        loss="sparse_categorical_crossentropy",
    )
    ```

    Args:
        inner_optimizer: a `tf.keras.optimizers.Optimizer` (not a legacy optimizer).
        clip_factor: the largest allowed ratio of unit gradient norm to unit weight norm.
        eps: the smallest weight norm used in the ratio.
        exclude: variables not to clip: a regex (or a list of them) searched in
            `variable.name`, or a callable `variable -> bool`. The paper never clips the
            final classifier.

    References:
        - [High-Performance Large-Scale Image Recognition Without Normalization](
          https://arxiv.org/abs/2102.06171)
        - [BNN - BN = ?](https://arxiv.org/abs/2104.08215)
    """

    def __init__(
        self,
        inner_optimizer: tf.keras.optimizers.Optimizer,
        clip_factor: float = 0.01,
        eps: float = 1e-3,
        exclude: ExcludeType = None,
    ):
        if not isinstance(inner_optimizer, tf.keras.optimizers.Optimizer):
            legacy = isinstance(inner_optimizer, tf.keras.optimizers.legacy.Optimizer)
            raise TypeError(
                "AdaptiveGradientClipping wraps a `tf.keras.optimizers.Optimizer`"
                + (" (legacy optimizers are not supported)" if legacy else "")
                + f"; got {inner_optimizer!r}."
            )
        if isinstance(inner_optimizer, AdaptiveGradientClipping):
            raise TypeError("AdaptiveGradientClipping cannot wrap another one.")
        if not clip_factor > 0:
            raise ValueError(f"`clip_factor` must be > 0, got {clip_factor}.")
        if not eps >= 0:
            raise ValueError(f"`eps` must be >= 0, got {eps}.")
        # Like LossScaleOptimizer: Optimizer.__init__ is not run, so the wrapper has no
        # variables of its own, and its checkpoint is the inner optimizer's (the mixin
        # delegates all tracking to `_trackable`). Attributes are set with
        # object.__setattr__ so that none of them becomes a checkpoint dependency.
        for name, value in (
            ("_trackable", inner_optimizer),
            ("_optimizer", inner_optimizer),
            ("clip_factor", float(clip_factor)),
            ("eps", float(eps)),
            ("exclude", exclude),
            ("_is_excluded", _exclude_predicate(exclude)),
        ):
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # Only reached for attributes this wrapper does not define (Optimizer.__init__ is
        # never run): the inner optimizer's settings, such as `jit_compile` or `_mesh`.
        if name.startswith("__") or "_optimizer" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self._optimizer, name)

    @property
    def inner_optimizer(self) -> tf.keras.optimizers.Optimizer:
        return self._optimizer

    def clip_gradients(self, grads_and_vars):
        """Returns `grads_and_vars` with every gradient not excluded clipped by AGC."""
        return [
            (
                g
                if g is None or self._is_excluded(v)
                else adaptive_clip(tf.convert_to_tensor(g), v, self.clip_factor, self.eps),
                v,
            )
            for g, v in grads_and_vars
        ]

    def compute_gradients(self, loss, var_list, tape=None):
        return self._optimizer.compute_gradients(loss, var_list, tape=tape)

    def aggregate_gradients(self, grads_and_vars):
        return self._optimizer.aggregate_gradients(grads_and_vars)

    def apply_gradients(
        self, grads_and_vars, name=None, skip_gradients_aggregation=False, **kwargs
    ):
        grads_and_vars = list(grads_and_vars)
        if kwargs.pop("experimental_aggregate_gradients", True) and not skip_gradients_aggregation:
            grads_and_vars = self._optimizer.aggregate_gradients(grads_and_vars)
        return self._optimizer.apply_gradients(
            self.clip_gradients(grads_and_vars),
            name=name,
            skip_gradients_aggregation=True,
            **kwargs,
        )

    def minimize(self, loss, var_list, tape=None):
        grads_and_vars = self.compute_gradients(loss, var_list, tape)
        self.apply_gradients(grads_and_vars)

    def build(self, var_list):
        return self._optimizer.build(var_list)

    @property
    def iterations(self):
        return self._optimizer.iterations

    @iterations.setter
    def iterations(self, variable):
        self._optimizer.iterations = variable

    @property
    def variables(self):
        return self._optimizer.variables

    @property
    def learning_rate(self):
        return self._optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self._optimizer.learning_rate = learning_rate

    @property
    def lr(self):
        return self._optimizer.learning_rate

    @lr.setter
    def lr(self, learning_rate):
        self._optimizer.learning_rate = learning_rate

    @property
    def use_ema(self):
        return self._optimizer.use_ema

    @use_ema.setter
    def use_ema(self, use_ema):
        self._optimizer.use_ema = use_ema

    @property
    def ema_momentum(self):
        return self._optimizer.ema_momentum

    @ema_momentum.setter
    def ema_momentum(self, ema_momentum):
        self._optimizer.ema_momentum = ema_momentum

    def finalize_variable_values(self, var_list):
        self._optimizer.finalize_variable_values(var_list)

    def set_weights(self, weights):
        self._optimizer.set_weights(weights)

    # The Keras v3 format (`.keras`, `.weights.h5`) walks attributes: the inner optimizer is
    # reached as a child and saves and loads its own variables, so the wrapper stores none
    # (storing them here too would write every slot twice).
    def save_own_variables(self, store):
        pass

    def load_own_variables(self, store):
        pass

    def get_config(self):
        exclude = self.exclude
        if callable(exclude):
            raise NotImplementedError(
                "An AdaptiveGradientClipping with a callable `exclude` cannot be serialized; "
                "use regex patterns, or save the model with include_optimizer=False."
            )
        return {
            "inner_optimizer": tf.keras.optimizers.serialize(self._optimizer),
            "clip_factor": self.clip_factor,
            "eps": self.eps,
            "exclude": list(exclude) if isinstance(exclude, (list, tuple)) else exclude,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = config.pop("inner_optimizer")
        if not isinstance(inner, tf.keras.optimizers.Optimizer):
            inner = tf.keras.optimizers.deserialize(
                inner, custom_objects=custom_objects, use_legacy_optimizer=False
            )
        return cls(inner, **config)


AGC = AdaptiveGradientClipping
