"""What the lifespan builds and the routes use: one object per app, no module-level state."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from service.feedback.capture import CaptureWriter
from service.feedback.drift import DriftMonitor
from service.feedback.store import FeedbackStore
from service.http.uploads import UploadLimits
from service.metrics import ServiceMetrics
from service.serving.bounded import BoundedRunner
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
    #: Captured inference inputs (a writer thread; started by the lifespan).
    capture: CaptureWriter = field(init=False)
    #: The capture and feedback folders, for the feedback routes.
    feedback: FeedbackStore = field(init=False)
    #: Where feedback's file work runs: one thread, a bounded wait list, then 503.
    feedback_runner: BoundedRunner = field(init=False)
    #: Sliding windows of predictions per served version, against their baselines.
    drift: DriftMonitor = field(init=False)

    def __post_init__(self) -> None:
        settings = self.settings
        self.upload_limits = UploadLimits(
            max_body_bytes=settings.max_upload_bytes,
            body_timeout_s=settings.body_timeout_s,
            max_images=settings.max_images_per_request,
        )
        self.capture = CaptureWriter(
            settings.capture_dir,
            max_bytes_per_model=settings.capture_max_bytes,
            queue_size=settings.capture_queue_size,
            observer=self.metrics,
        )
        self.feedback = FeedbackStore(settings.capture_dir, settings.feedback_dir)
        self.feedback_runner = BoundedRunner(
            max_waiting=settings.feedback_max_waiting, concurrency=1, thread_name="feedback"
        )
        self.drift = DriftMonitor(settings.drift_window)

    @property
    def ready(self) -> bool:
        return self.repository.ready and not self.shutting_down
