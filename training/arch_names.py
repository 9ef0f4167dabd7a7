"""The architecture names ``--arch`` accepts, importable without TensorFlow.

``training.architectures`` builds them (and imports Keras); the CLI checks a name against this
tuple before anything heavy is imported, so a typo is reported at once.
"""

from __future__ import annotations

ARCHITECTURES: tuple[str, ...] = ("simple", "lenet5", "alexnet", "vgg16")
