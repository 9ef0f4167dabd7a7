"""The service's one settings object: defaults < ``IMGCLS_*`` environment variables < flags."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: Every setting ``x_y`` is read from the environment variable ``IMGCLS_X_Y``.
ENV_PREFIX = "IMGCLS_"

#: Most worker processes a user may ask for.
MAX_WORKERS = 64


def env_name(field: str) -> str:
    """The environment variable of a setting: ``max_queue_size`` -> ``IMGCLS_MAX_QUEUE_SIZE``."""
    return ENV_PREFIX + field.upper()


#: Most workers ``auto`` starts: each loads every model, and batches get smaller as traffic
#: is split between more of them.
MAX_AUTO_WORKERS = 4


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def auto_workers(cpus: int) -> int:
    """``--workers auto``: one per usable CPU, at most :data:`MAX_AUTO_WORKERS`."""
    return max(1, min(cpus, MAX_AUTO_WORKERS))


class Settings(BaseSettings):
    """Every knob of the service. Units are in the names: ``_s`` seconds, ``_bytes`` bytes."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=None, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int | Literal["auto"] = Field(
        default="auto",
        description="worker processes; auto: one per usable CPU (at most "
        f"{MAX_AUTO_WORKERS}) when the default model is cheap per image, else one",
    )
    log_level: str = "info"

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: object) -> object:
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
            raise ValueError(f"must be a number of worker processes (1-{MAX_WORKERS}) or auto")
        return int(text)

    @property
    def worker_count(self) -> int:
        """Worker processes to start: ``auto`` is one per usable CPU (at most
        ``MAX_AUTO_WORKERS``); the supervisor may keep only one (see service.process.supervisor)."""
        return auto_workers(usable_cpus()) if self.workers == "auto" else int(self.workers)

    models_dir: Path = Path("models")
    model_name: str = Field(default="digits", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    poll_interval_s: float = Field(
        default=2.0, gt=0, description="how often models/<name>/ is scanned"
    )

    max_batch_size: int = Field(default=32, ge=1, le=1024, description="images per model call")
    batch_timeout_s: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description="extra wait for a fuller batch; 0: run as soon as idle",
    )
    batch_fill_wait_ratio: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="an idle model may wait this fraction of its last call's duration for a "
        "fuller batch (waits under 2 ms are skipped); 0: never",
    )
    max_queue_size: int = Field(
        default=256, ge=1, description="images waiting for the model, then 503"
    )
    request_timeout_s: float = Field(
        default=10.0, gt=0, description="deadline per request, then 504"
    )
    retry_after_s: int = Field(default=1, ge=1, description="Retry-After header on 503")

    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, description="per request body")
    max_images_per_request: int = Field(
        default=16, ge=1, le=1024, description="images per native /predict request (multipart)"
    )
    max_tensor_images: int | None = Field(
        default=None,
        ge=1,
        description="images per V2 or TF Serving request (REST and gRPC); unset: the model's "
        "queue size (MAX_QUEUE_SIZE): a request larger than MAX_BATCH_SIZE is split across "
        "model calls and answered whole",
    )
    max_pixels: int = Field(default=40_000_000, ge=1, description="width*height, before decoding")
    max_top_k: int = Field(default=100, ge=1)
    decode_threads: int = Field(default=2, ge=1, le=64, description="threads decoding uploads")
    inline_decode_max_pixels: int = Field(
        default=4096,
        ge=0,
        description="uploads (and model inputs) this small decode on the event loop, not the "
        "decode pool: cheaper than the thread hop; 0: always use the pool",
    )
    tf_intra_op_threads: int = Field(
        default=0,
        ge=0,
        description="the model's threads, TensorFlow's and a compiled runtime's; 0: they decide "
        "(every core); with several workers, CPUs / workers each",
    )
    runtime: str = Field(
        default="auto",
        pattern=r"^[a-z0-9][a-z0-9_-]*$",
        description="what computes the model: auto (the fastest compiled artifact that passed "
        "the equivalence rule and takes pixels, else the SavedModel), savedmodel, an artifact "
        "(openvino-int8) or a runtime (openvino); serving.yaml's runtime overrides it per model",
    )
    static_batch_shapes: bool = Field(
        default=True,
        description="compile a small network's OpenVINO artifact once per batch size up to 32 "
        "(faster calls when batch sizes vary; more memory); false: one compilation for any size",
    )
    tf_inter_op_threads: int = Field(default=0, ge=0, description="0: TensorFlow decides")
    gil_switch_interval_s: float = Field(
        default=0.001,
        gt=0,
        le=0.1,
        description="sys.setswitchinterval: how long the busy event loop may keep the GIL from "
        "the model thread (Python's default 0.005 delays every model call)",
    )
    explain_max_waiting: int = Field(
        default=2, ge=0, le=64, description="explanations waiting behind the running one, then 503"
    )

    # Production feedback (capture is off by default: storing user images is a privacy decision).
    capture_rate: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="share (0..1) of inference inputs stored for feedback; 0: off (per model: "
        "capture_rate in serving.yaml)",
    )
    capture_dir: Path = Field(
        default=Path("data/captured"), description="captured inputs, one folder per model"
    )
    capture_max_bytes: int = Field(
        default=1 << 30, ge=1024, description="bytes each model's captures may take; oldest go"
    )
    capture_queue_size: int = Field(
        default=1024, ge=1, description="captures waiting for the writer thread, then skipped"
    )
    feedback_dir: Path = Field(
        default=Path("data/feedback"),
        description="labelled examples, <dir>/<model>/<label>/: what train.py --data reads",
    )
    feedback_max_items: int = Field(
        default=100, ge=1, le=10_000, description="labels per POST /feedback request"
    )
    feedback_max_waiting: int = Field(
        default=64, ge=1, description="feedback requests waiting for the disk, then 503"
    )
    drift_window: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="latest predictions per version compared "
        "with the version's baseline for imgcls_prediction_drift",
    )
    access_log: bool = Field(
        default=False, description="one log line per request (method, path, status, ms, id)"
    )

    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="comma-separated; empty: no key needed"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="serve /metrics apart"
    )
    grpc_port: int | None = Field(
        default=8001,
        ge=0,
        le=65535,
        description="gRPC (Open Inference Protocol V2 and TF Serving's PredictionService) on "
        "this port, beside HTTP; empty: off",
    )
    grpc_max_concurrent_streams: int = Field(
        default=128, ge=1, le=65536, description="gRPC calls in flight per connection"
    )
    shutdown_grace_s: float = Field(default=20.0, gt=0, description="drain time on SIGTERM")
    shutdown_delay_s: float = Field(
        default=0.0,
        ge=0,
        description="SIGTERM: answer /readyz 503 this long before intake stops (load balancers)",
    )
    # Slow or hostile clients (uvicorn's own defaults wait forever for headers and bodies).
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="request line + headers must arrive within this, then 408"
    )
    body_timeout_s: float = Field(
        default=60.0, gt=0, description="a request body must arrive within this, then 408"
    )
    keep_alive_timeout_s: int = Field(
        default=5, ge=1, description="an idle keep-alive connection is closed after this"
    )
    max_header_bytes: int = Field(
        default=64 * 1024, ge=1024, le=16 * 1024 * 1024, description="request line + headers, 431"
    )
    max_connections: int = Field(
        default=1024, ge=1, description="open connections per process; beyond it 503 and close"
    )

    @field_validator("grpc_port", "metrics_port", "max_tensor_images", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        """``IMGCLS_GRPC_PORT=`` (empty) turns the setting off."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator(
        "poll_interval_s",
        "batch_timeout_s",
        "request_timeout_s",
        "shutdown_grace_s",
        "shutdown_delay_s",
        "header_timeout_s",
        "body_timeout_s",
    )
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number of seconds")
        return value

    def _named(self, field: str) -> str:
        """``IMGCLS_X=value`` for a setting the user gave, ``IMGCLS_X (default value)`` else:
        an error names what the user can change, not an internal field."""
        value = getattr(self, field)
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        if field in self.model_fields_set:
            return f"{env_name(field)}={shown}"
        return f"{env_name(field)} (default {shown})"

    @model_validator(mode="after")
    def _queue_holds_a_batch(self) -> Settings:
        if self.max_queue_size < self.max_batch_size:
            raise ValueError(
                f"{self._named('max_queue_size')} must be >= "
                f"{self._named('max_batch_size')}: the queue must hold a full batch; raise "
                f"{env_name('max_queue_size')} or lower {env_name('max_batch_size')}"
            )
        return self

    @model_validator(mode="after")
    def _delay_within_grace(self) -> Settings:
        if self.shutdown_delay_s >= self.shutdown_grace_s:
            raise ValueError(
                f"{self._named('shutdown_delay_s')} must be shorter than "
                f"{self._named('shutdown_grace_s')}: the delay is part of the grace; lower "
                f"{env_name('shutdown_delay_s')} or raise {env_name('shutdown_grace_s')}"
            )
        return self

    def tensor_images_limit(self, queue_size: int) -> int:
        """Images one V2 or TF Serving request may carry, for a model queueing ``queue_size``."""
        return self.max_tensor_images if self.max_tensor_images is not None else queue_size

    @property
    def model_dir(self) -> Path:
        """``models/<name>/``, where the versions live."""
        return self.models_dir / self.model_name
