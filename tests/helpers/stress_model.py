"""A slow test model with an injected fault, published through the real publishing code.

``python -m tests.helpers.stress_model MODELS_DIR`` publishes ``MODELS_DIR/stress/1``:
VGG-16 (``training.architectures.build("vgg16", (64, 64, 3), 10)``) with random weights (the
initial ones, output layer steepened), about 25 ms per image on one CPU core, so a few hundred
clients are several times its capacity. Its ``serve`` endpoint raises ``InvalidArgumentError``
for a batch that contains an all-white image (every pixel 255): a real model call that fails
on demand. It runs in its own process so that the test process never imports TensorFlow.
"""

from __future__ import annotations

import sys
from pathlib import Path

MODEL_NAME = "stress"
INPUT_SIZE = 64
NUM_CLASSES = 10
#: In the InvalidArgumentError of a batch holding an all-white image.
POISON_MESSAGE = "injected fault: an all-white image"
OUTPUT_SCALE = 3000.0

#: Settings of the shared stress server (tests/reliability/conftest.py): small batches and queue,
#: one TensorFlow thread, so that its capacity (~40 images/s) is far below what a few hundred
#: clients send.
STRESS_SETTINGS = {
    "model_name": MODEL_NAME,
    "max_batch_size": "4",
    "max_queue_size": "16",
    "request_timeout_s": "5",
    "tf_intra_op_threads": "1",
    "tf_inter_op_threads": "1",
    "decode_threads": "1",
}


def publish_stress_model(models_dir: Path) -> int:
    import keras
    import tensorflow as tf

    from contract.metadata import InputSpec
    from training.architectures import build
    from training.export import SERVE_ENDPOINT, publish

    keras.utils.set_random_seed(0)
    model = build("vgg16", (INPUT_SIZE, INPUT_SIZE, 3), NUM_CLASSES)
    # Random initial weights give every image ~0.1 for every class; a steeper output layer
    # makes the answers differ from image to image, so a mixed-up answer would be caught.
    output = [layer for layer in model.layers if layer.get_weights()][-1]
    kernel, bias = output.get_weights()
    output.set_weights([kernel * OUTPUT_SCALE, bias])

    def write(tmp: Path) -> list[str]:
        archive = keras.export.ExportArchive()
        archive.track(model)
        spec = tf.TensorSpec(shape=(None, None, None, 3), dtype=tf.float32, name="images")

        def serve(images: tf.Tensor) -> tf.Tensor:
            white = tf.reduce_min(images, axis=[1, 2, 3]) >= 255.0  # per image
            tf.debugging.assert_equal(tf.reduce_any(white), False, message=POISON_MESSAGE)
            return model(images, training=False)

        archive.add_endpoint(name=SERVE_ENDPOINT, fn=serve, input_signature=[spec])
        archive.write_out(str(tmp), verbose=False)
        return [SERVE_ENDPOINT]

    version, _ = publish(
        models_dir=models_dir,
        name=MODEL_NAME,
        write_artifacts=write,
        input_spec=InputSpec(height=INPUT_SIZE, width=INPUT_SIZE, channels=3, color_mode="rgb"),
        class_names=[f"class-{i}" for i in range(NUM_CLASSES)],
        arch="vgg16",
        parameter_count=int(model.count_params()),
        training={"weights": "random initialisation (reliability test model)"},
        data_fingerprint="",
        metrics={},
    )
    return version


if __name__ == "__main__":
    publish_stress_model(Path(sys.argv[1]))
