"""A new version of a trained model that passes the evaluation gate but misbehaves live.

``python -m tests.helpers.faulty_version MODELS_DIR [NAME] [SOURCE_VERSION]`` publishes the
next version of ``NAME`` (default ``digits``) through the real publishing code: the source
version's SavedModel wrapped so that its ``serve`` raises ``InvalidArgumentError`` for a batch
whose pixel sum is odd (a real model call failing on about half of the live batches; the
warm-up's all-zero batches pass, so the version loads), with the source version's metadata,
gate verdict included: blessed, as a version that scored well on the held-out set would be. It
runs in its own process so that the test process never imports TensorFlow.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: In the InvalidArgumentError of a failing batch.
FAULT_MESSAGE = "injected fault: odd pixel sum"


def publish_faulty(models_dir: Path, name: str = "digits", source_version: int = 1) -> int:
    import tensorflow as tf

    from contract.metadata import read_metadata
    from training.export import SERVE_ENDPOINT, publish

    source = models_dir / name / str(source_version)
    meta = read_metadata(source)

    def write(tmp: Path) -> list[str]:
        inner = tf.saved_model.load(str(source))
        spec = tf.TensorSpec(shape=(None, None, None, 3), dtype=tf.float32, name="images")

        class Faulty(tf.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = inner

            @tf.function(input_signature=[spec])
            def serve(self, images: tf.Tensor) -> tf.Tensor:
                total = tf.cast(tf.reduce_sum(tf.round(images)), tf.int64)
                tf.debugging.assert_equal(
                    tf.math.floormod(total, 2), tf.constant(0, tf.int64), message=FAULT_MESSAGE
                )
                return self.inner.serve(images)

        module = Faulty()
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve})
        return [SERVE_ENDPOINT]

    version, _ = publish(
        models_dir=models_dir,
        name=name,
        write_artifacts=write,
        input_spec=meta.input,
        class_names=meta.class_names,
        arch=meta.arch,
        parameter_count=meta.parameter_count,
        training={**meta.training, "faulty_copy_of": source_version},
        data_fingerprint=meta.data_fingerprint,
        metrics=meta.metrics,
        drift_baseline=meta.drift_baseline,
        evaluation=meta.evaluation,
    )
    return version


if __name__ == "__main__":
    arguments = sys.argv[1:]
    published = publish_faulty(
        Path(arguments[0]),
        arguments[1] if len(arguments) > 1 else "digits",
        int(arguments[2]) if len(arguments) > 2 else 1,
    )
    print(published)
