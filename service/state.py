"""What the lifespan builds and the routes use: one object per app, no module-level state."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.batching import Batcher
from service.metrics import ServiceMetrics
from service.model_store import LoadedModel, ModelStore
from service.settings import Settings


@dataclass(frozen=True)
class Prediction:
    """One image's class probabilities and the version that computed them."""

    probabilities: np.ndarray  # (num_classes,) float32
    model: LoadedModel


@dataclass
class ServiceState:
    settings: Settings
    metrics: ServiceMetrics
    store: ModelStore
    batcher: Batcher[np.ndarray, Prediction]
    decode_pool: ThreadPoolExecutor
    shutting_down: bool = False
    extras: dict[str, object] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.store.current is not None and not self.shutting_down and self.batcher.running
