"""What the lifespan builds and the routes use: one object per app, no module-level state."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from service.http.uploads import UploadLimits
from service.metrics import ServiceMetrics
from service.serving.repository import ModelRepository
from service.settings import Settings


@dataclass
class ServiceState:
    settings: Settings
    metrics: ServiceMetrics
    repository: ModelRepository
    decode_pool: ThreadPoolExecutor
    shutting_down: bool = False
    extras: dict[str, object] = field(default_factory=dict)
    upload_limits: UploadLimits = field(init=False)

    def __post_init__(self) -> None:
        self.upload_limits = UploadLimits(
            max_body_bytes=self.settings.max_upload_bytes,
            body_timeout_s=self.settings.body_timeout_s,
            max_images=self.settings.max_images_per_request,
        )

    @property
    def ready(self) -> bool:
        return self.repository.ready and not self.shutting_down
