"""``train.py --init-from VERSION``: start a run from a published version's weights.

Every version publishes its Keras weights (:data:`WEIGHTS_FILE`) beside the SavedModel; a run
with the same architecture and input shape loads them before training, so a retrain on new or
feedback data takes a few epochs. When the classes differ, the last layer starts afresh.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from contract.metadata import InvalidModelVersionError, verify_version_dir
from training.errors import UserError

logger = logging.getLogger("training")

#: The Keras weights a published version carries for ``--init-from``.
WEIGHTS_FILE = "model.weights.h5"


def init_from(
    model: Any,
    args: argparse.Namespace,
    model_name: str,
    input_shape: tuple[int, int, int],
    class_names: list[str],
) -> None:
    """Load the weights of published version ``args.init_from`` into the freshly built
    ``model`` (``--init-from``). The architecture and input shape must match; when the classes
    differ, every layer but the last starts from the version and the last one afresh."""
    version = args.init_from
    version_dir = args.models_dir / model_name / str(version)
    try:
        metadata = verify_version_dir(version_dir, repository_root=args.models_dir)
    except InvalidModelVersionError as exc:
        raise UserError(f"--init-from {version}: {version_dir} cannot be used: {exc}") from None
    shape = (metadata.input.height, metadata.input.width, metadata.input.channels)
    if metadata.arch != args.arch or shape != tuple(input_shape):
        raise UserError(
            f"--init-from {version}: version {version} is a {metadata.arch} on "
            f"{','.join(map(str, shape))}; this run builds a {args.arch} on "
            f"{','.join(map(str, input_shape))} (pass --arch and --input-shape to match)"
        )
    weights = version_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise UserError(
            f"--init-from {version}: version {version} has no {WEIGHTS_FILE} (it was published "
            "before --init-from existed); train without --init-from"
        )
    same_classes = list(metadata.class_names) == list(class_names)
    try:
        model.load_weights(str(weights), skip_mismatch=not same_classes)
    except (ValueError, KeyError) as exc:
        raise UserError(
            f"--init-from {version}: its weights do not fit this run's layers (trained with "
            f"other options? --normalize-digits, --data): {str(exc).splitlines()[0][:300]}"
        ) from None
    if not same_classes:
        _reset_last_layer(model)
        logger.info(
            "--init-from %d: classes changed (%s -> %s): the last layer starts afresh",
            version,
            ", ".join(metadata.class_names),
            ", ".join(class_names),
        )
    else:
        logger.info("--init-from %d: starting from its weights", version)


def _reset_last_layer(model: Any) -> None:
    """Fresh initial values for the last layer with weights (the classifier)."""
    layer = next(layer for layer in reversed(model.layers) if layer.weights)
    for variable in layer.weights:
        initializer = (
            layer.kernel_initializer if variable.path.endswith("kernel") else layer.bias_initializer
        )
        variable.assign(initializer(variable.shape, dtype=variable.dtype))
