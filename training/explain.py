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

For a model with the digit normalisation layer (:mod:`training.normalization`), the network sees
a cropped, scaled and centred copy of the image; ``gradcam`` carries its heatmap back through
that crop, so the map lies over the image the caller sent (a small digit in a corner gets its
heat in that corner), and also returns the crop and the normalised picture itself. There the
map is taken relative to an empty frame: ``relu(sum_k alpha_k (A_k - A_k(blank)))``, so the
activations every normalised digit shares (biases, the zero padding at the frame's edges, which
plain Grad-CAM lights up because every training digit leaves the edges empty) draw no heat.

Both take the ``serve`` input: float32 raw RGB pixels 0..255, shape ``(batch, any H, any W, 3)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from contract.names import FEATURE_MAPS_ENDPOINT, GRADCAM_ENDPOINT

__all__ = [
    "EXPLAIN_ENDPOINTS",
    "FEATURE_MAP_LAYERS",
    "conv_layers",
    "feature_maps_endpoint",
    "gradcam_endpoint",
]

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


def _gradcam_parts(model: Any) -> tuple[Any, Any | None, Any | None]:
    """``(grad_model, softmax head or None, NormalizeDigits layer or None)`` for Grad-CAM.

    ``grad_model`` maps the model's input to ``[last conv activations, score source, the
    picture the network works on (0..255), what the crop is computed from]``.

    Raises:
        ValueError: the model has no Conv2D layer.
    """
    import keras

    from training.normalization import NormalizeDigits

    convs = conv_layers(model)
    if not convs:
        raise ValueError(f"model {model.name!r} has no Conv2D layer to explain")
    head = _softmax_head(model)
    # With a softmax head, stop at its input and apply the kernel ourselves to get the logits.
    score_source = head.input if head is not None else model.output
    normalizer = next((lay for lay in model.layers if isinstance(lay, NormalizeDigits)), None)
    # The picture the network works on, 0..255 (the rescaling layer's input when there is one),
    # and what the crop is computed from (the normalisation layer's input: the model's size).
    rescale = next((lay for lay in model.layers if lay.name == "rescale"), None)
    seen = rescale.input if rescale is not None else convs[0].input
    cropped_from = normalizer.input if normalizer is not None else seen
    grad_model = keras.Model(
        model.inputs,
        [convs[-1].output, score_source, seen, cropped_from],
        name="gradcam",
    )
    return grad_model, head, normalizer


def _probabilities_and_logits(features: Any, head: Any | None) -> tuple[Any, Any]:
    """Class probabilities and pre-softmax logits from the score source (see above)."""
    import tensorflow as tf

    features = tf.cast(features, tf.float32)
    if head is None:
        return features, tf.math.log(tf.maximum(features, 1e-30))
    logits = tf.matmul(features, tf.cast(head.kernel, tf.float32))
    if head.use_bias:
        logits += tf.cast(head.bias, tf.float32)
    return tf.nn.softmax(logits), logits


def _chosen_classes(probabilities: Any, class_index: Any, num_classes: int) -> Any:
    """``class_index``, with ``-1`` replaced by the most probable class; checked < classes."""
    import tensorflow as tf

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
        return tf.identity(chosen)


def _onto_input(cam: Any, source: Any, normalizer: Any | None) -> tuple[Any, Any]:
    """``(cam over the input image, crop box)``: with digit normalisation the map is carried
    back through the crop; without it the map already covers the image, box ``(0, 0, 1, 1)``
    (fractions of the height and width: top, left, bottom, right)."""
    import tensorflow as tf

    from training.normalization import crop_boxes, heatmap_to_input

    if normalizer is None:
        return cam, tf.tile(tf.constant([[0.0, 0.0, 1.0, 1.0]]), [tf.shape(cam)[0], 1])
    size = tf.shape(source)[1:3]
    size_f = tf.cast(size, tf.float32)
    transforms = normalizer.transforms(source)
    cam = heatmap_to_input(cam, transforms, size, normalizer.frame)
    box = crop_boxes(transforms, normalizer.frame)  # pixel centres, inclusive
    half = transforms[:, 0:1] / 2.0  # half an output pixel, in input pixels
    edges = box + tf.concat([-half, -half, half, half], axis=1)
    return cam, edges / tf.concat([size_f, size_f], axis=0)[None, :]


def gradcam_endpoint(model: Any) -> tuple[str, Callable[..., Any], list[Any]]:
    """Grad-CAM at the last Conv2D layer.

    Signature: ``gradcam(images, class_index)`` with ``images`` float32 ``(N, H, W, 3)`` in
    0..255 and ``class_index`` int32 ``(N,)`` (``-1``: the most probable class). Returns a dict:

    * ``heatmap``: float32 ``(N, h, w)`` at the last conv layer's resolution, each map scaled
      to 0..1 by its own maximum (all zeros when nothing speaks for the class);
    * ``probabilities``: float32 ``(N, num_classes)``, the same numbers ``serve`` returns;
    * ``class_index``: int32 ``(N,)``, the class each map explains;
    * ``crop_box``: float32 ``(N, 4)``, the part of the image the network saw, as fractions of
      its height and width ``(top, left, bottom, right)`` (``(0, 0, 1, 1)`` without digit
      normalisation; beyond 0..1 where the crop was padded);
    * ``network_input``: float32 ``(N, h', w', c)``, the picture the first conv layer saw,
      0..255 (after resizing and, where the model has it, digit normalisation).

    With digit normalisation, the heatmap's ``(h, w)`` grid covers the whole input image (the
    map is carried back through the crop), not the normalised frame.

    Raises:
        ValueError: the model has no Conv2D layer.
    """
    import tensorflow as tf

    grad_model, head, normalizer = _gradcam_parts(model)
    num_classes = int(model.output.shape[-1])

    def gradcam(images: Any, class_index: Any) -> dict[str, Any]:
        with tf.GradientTape() as tape:
            # The conv kernels are variables, so the tape records everything downstream of them.
            raw_activations, features, network_input, source = grad_model(images, training=False)
            probabilities, logits = _probabilities_and_logits(features, head)
            chosen = _chosen_classes(probabilities, class_index, num_classes)
            score = tf.gather(logits, chosen[:, None], batch_dims=1)[:, 0]
        grads = tf.cast(tape.gradient(score, raw_activations), tf.float32)
        activations = tf.cast(raw_activations, tf.float32)
        # alpha_k: the class score's sensitivity to each channel, averaged over positions.
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        if normalizer is not None:
            # Relative to an empty frame (what the normaliser makes of a blank sheet): the
            # activations every digit shares (biases, the zero padding at the frame's edges)
            # then draw no heat, and the map shows what the ink itself contributes.
            blank_activations = grad_model(tf.zeros_like(images[:1]), training=False)[0]
            activations -= tf.cast(blank_activations, tf.float32)
        cam = tf.nn.relu(tf.reduce_sum(weights * activations, axis=-1))
        cam, crop = _onto_input(cam, source, normalizer)
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        heatmap = tf.where(peak > _EPSILON, cam / tf.maximum(peak, _EPSILON), tf.zeros_like(cam))
        return {
            "heatmap": heatmap,
            "probabilities": probabilities,
            "class_index": chosen,
            "crop_box": crop,
            "network_input": tf.cast(network_input, tf.float32),
        }

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
