"""Explanation endpoints published inside the SavedModel, beside ``serve``.

Each factory takes the trained (flat, Functional) Keras model and returns
``(endpoint name, function, input signature)`` for :func:`training.export.export_saved_model`,
so explanations are computed by the exported graph itself: the service needs no Keras code and
cannot disagree with the model about preprocessing or layer names.

* ``gradcam``: Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
  Gradient-based Localization", ICCV 2017) at the last convolution layer, for a requested class
  or (class index ``-1``) the top one. The class score is the pre-softmax logit, as in the paper:
  the gradient of a saturated softmax probability is close to zero and numerically noisy.
* ``feature_maps``: the activations of the first convolution layer(s).

Both take the ``serve`` input: float32 raw RGB pixels 0..255, shape ``(batch, any H, any W, 3)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = [
    "EXPLAIN_ENDPOINTS",
    "FEATURE_MAPS_ENDPOINT",
    "FEATURE_MAP_LAYERS",
    "GRADCAM_ENDPOINT",
    "conv_layers",
    "feature_maps_endpoint",
    "gradcam_endpoint",
]

GRADCAM_ENDPOINT = "gradcam"
FEATURE_MAPS_ENDPOINT = "feature_maps"
#: How many of the first convolution layers ``feature_maps`` returns.
FEATURE_MAP_LAYERS = 2
#: A heatmap whose maximum is below this is all zeros (nothing speaks for the class).
_EPSILON = 1e-12


def conv_layers(model: Any) -> list[Any]:
    """The model's Conv2D layers in order (input to output)."""
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def _image_spec() -> Any:
    import tensorflow as tf

    return tf.TensorSpec(shape=(None, None, None, 3), dtype=tf.float32, name="images")


def _softmax_head(model: Any) -> Any | None:
    """The final Dense layer when it applies a softmax (then its logits are recoverable)."""
    import keras

    last = model.layers[-1]
    if isinstance(last, keras.layers.Dense) and last.activation is keras.activations.softmax:
        return last
    return None


def gradcam_endpoint(model: Any) -> tuple[str, Callable[..., Any], list[Any]]:
    """Grad-CAM at the last Conv2D layer.

    Signature: ``gradcam(images, class_index)`` with ``images`` float32 ``(N, H, W, 3)`` in
    0..255 and ``class_index`` int32 ``(N,)`` (``-1``: the most probable class). Returns a dict:

    * ``heatmap``: float32 ``(N, h, w)`` at the last conv layer's resolution, each map scaled
      to 0..1 by its own maximum (all zeros when nothing speaks for the class);
    * ``probabilities``: float32 ``(N, num_classes)``, the same numbers ``serve`` returns;
    * ``class_index``: int32 ``(N,)``, the class each map explains.

    Raises:
        ValueError: the model has no Conv2D layer.
    """
    import keras
    import tensorflow as tf

    convs = conv_layers(model)
    if not convs:
        raise ValueError(f"model {model.name!r} has no Conv2D layer to explain")
    last_conv = convs[-1]
    head = _softmax_head(model)
    # With a softmax head, stop at its input and apply the kernel ourselves to get the logits.
    score_source = head.input if head is not None else model.output
    grad_model = keras.Model(model.inputs, [last_conv.output, score_source], name="gradcam")
    num_classes = int(model.output.shape[-1])

    def gradcam(images: Any, class_index: Any) -> dict[str, Any]:
        with tf.GradientTape() as tape:
            # The conv kernels are variables, so the tape records everything downstream of them.
            raw_activations, features = grad_model(images, training=False)
            features = tf.cast(features, tf.float32)
            if head is not None:
                kernel = tf.cast(head.kernel, tf.float32)
                logits = tf.matmul(features, kernel)
                if head.use_bias:
                    logits += tf.cast(head.bias, tf.float32)
                probabilities = tf.nn.softmax(logits)
            else:
                probabilities = features
                logits = tf.math.log(tf.maximum(probabilities, 1e-30))
            chosen = tf.where(
                class_index < 0,
                tf.argmax(probabilities, axis=-1, output_type=tf.int32),
                class_index,
            )
            # The check must run before the gather: without the dependency the graph may
            # execute the gather first and fail with a less helpful message.
            check = tf.debugging.assert_less(
                chosen, num_classes, message="class_index must be < the number of classes"
            )
            with tf.control_dependencies([check]):
                chosen = tf.identity(chosen)
            score = tf.gather(logits, chosen[:, None], batch_dims=1)[:, 0]
        grads = tf.cast(tape.gradient(score, raw_activations), tf.float32)
        activations = tf.cast(raw_activations, tf.float32)
        # alpha_k: the class score's sensitivity to each channel, averaged over positions.
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * activations, axis=-1))
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        heatmap = tf.where(peak > _EPSILON, cam / tf.maximum(peak, _EPSILON), tf.zeros_like(cam))
        return {"heatmap": heatmap, "probabilities": probabilities, "class_index": chosen}

    signature = [
        _image_spec(),
        tf.TensorSpec(shape=(None,), dtype=tf.int32, name="class_index"),
    ]
    return GRADCAM_ENDPOINT, gradcam, signature


def feature_maps_endpoint(model: Any) -> tuple[str, Callable[..., Any], list[Any]]:
    """The activations of the first :data:`FEATURE_MAP_LAYERS` Conv2D layers.

    Signature: ``feature_maps(images)`` with ``images`` float32 ``(N, H, W, 3)`` in 0..255.
    Returns a dict ``{layer name: float32 (N, h, w, channels)}`` (after the layer's activation),
    e.g. ``{"conv1": (N, 28, 28, 32), "conv2": (N, 14, 14, 64)}`` for ``simple``.

    Raises:
        ValueError: the model has no Conv2D layer.
    """
    import keras
    import tensorflow as tf

    layers = conv_layers(model)[:FEATURE_MAP_LAYERS]
    if not layers:
        raise ValueError(f"model {model.name!r} has no Conv2D layer to show")
    maps_model = keras.Model(
        model.inputs, {layer.name: layer.output for layer in layers}, name="feature_maps"
    )

    def feature_maps(images: Any) -> dict[str, Any]:
        outputs = maps_model(images, training=False)
        return {name: tf.cast(value, tf.float32) for name, value in outputs.items()}

    return FEATURE_MAPS_ENDPOINT, feature_maps, [_image_spec()]


#: What training publishes beside ``serve``, in this order.
EXPLAIN_ENDPOINTS: tuple[Callable[[Any], tuple[str, Callable[..., Any], list[Any]]], ...] = (
    gradcam_endpoint,
    feature_maps_endpoint,
)
