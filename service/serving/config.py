"""The repository's serving configuration: ``<models-dir>/serving.yaml``.

One optional file says, per model, which versions are served (TF Serving's and Triton's version
policies), which names (labels) point at which versions, what share of unpinned traffic a label
takes (a canary), and per-model batching limits. Without the file every model serves its latest
version with the service-wide limits, as before.

```yaml
models:
  digits:
    version_policy: {latest: 2}        # or {specific: [1, 3]}, or all
    labels:
      stable: 3
      canary: {version: 4, weight: 0.1}  # 10 % of unpinned requests
    limits: {max_batch_size: 16, max_queue_size: 64, batch_timeout_s: 0.002}
    capture_rate: 0.05                 # store 5 % of its inputs for feedback
    gate: {max_accuracy_drop: 0.005, max_class_recall_drop: 0.05}  # train.py's evaluation gate
    rollout: {step_weight: 0.1, max_weight: 0.5, interval_s: 60, threshold: 3}  # the controller
    runtime: openvino-int8             # or auto, savedmodel, openvino (IMGCLS_RUNTIME per model)
```

A version a label names is served beside the policy's versions (when it loads): publishing a new
version never retires ``stable``. The file is re-read whenever it changes. A file that does not
parse or validate is reported (log, ``GET /models``, ``imgcls_serving_config_valid``) and the last
good configuration keeps serving.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from contract.evaluation import GateRule

logger = logging.getLogger(__name__)

CONFIG_FILE = "serving.yaml"
#: Largest configuration file read, bytes: anything bigger is a mistake, not a config.
MAX_CONFIG_BYTES = 1 << 20
LABEL_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"


class ServingConfigError(ValueError):
    """The configuration file is unreadable or invalid; the message says what to fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LatestPolicy(_Strict):
    latest: int = Field(default=1, ge=1, le=100, description="serve the N newest versions")


class SpecificPolicy(_Strict):
    specific: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)


VersionPolicy = LatestPolicy | SpecificPolicy | Literal["all"]


class LabelTarget(_Strict):
    """A label's version and the share (0..1) of the model's unpinned requests it takes."""

    version: int = Field(ge=1)
    weight: float = Field(default=0.0, ge=0.0, le=1.0)


class ModelLimits(_Strict):
    """Per-model overrides of the service-wide batching limits (same names as the settings)."""

    max_batch_size: int | None = Field(default=None, ge=1, le=1024)
    max_queue_size: int | None = Field(default=None, ge=1)
    batch_timeout_s: float | None = Field(default=None, ge=0, le=10)
    request_timeout_s: float | None = Field(default=None, gt=0, le=600)

    @model_validator(mode="after")
    def _queue_holds_a_batch(self) -> ModelLimits:
        if (
            self.max_batch_size is not None
            and self.max_queue_size is not None
            and self.max_queue_size < self.max_batch_size
        ):
            raise ValueError(
                f"limits.max_queue_size ({self.max_queue_size}) must be >= "
                f"limits.max_batch_size ({self.max_batch_size})"
            )
        return self


class RolloutChecks(_Strict):
    """What a canary must show against stable over one interval (canary minus stable, or
    canary over stable); a check left out (``null``) is not made."""

    error_ratio_max_delta: float | None = Field(
        default=0.01, ge=0, le=1, description="5xx share of requests, canary minus stable"
    )
    p99_latency_max_ratio: float | None = Field(
        default=1.5, gt=0, description="p99 request duration, canary over stable"
    )
    confidence_min_delta: float | None = Field(
        default=-0.05, ge=-1, le=1, description="mean top-1 probability, canary minus stable"
    )
    live_accuracy_min_delta: float | None = Field(
        default=-0.02, ge=-1, le=1, description="accuracy from feedback, canary minus stable"
    )


class RolloutPolicy(_Strict):
    """``python -m service.rollout``'s progressive canary for one model (Flagger's terms)."""

    step_weight: float = Field(default=0.1, gt=0, le=1)
    max_weight: float = Field(default=0.5, gt=0, le=1)
    interval_s: float = Field(default=60, ge=1, le=86_400)
    threshold: int = Field(default=3, ge=1, le=1000, description="failed checks to roll back")
    min_requests: int = Field(
        default=50,
        ge=1,
        description="requests each of canary and stable must answer in an interval to judge it",
    )
    min_feedback: int = Field(
        default=20,
        ge=1,
        description="feedback examples each must have in an interval for the accuracy check",
    )
    checks: RolloutChecks = Field(default_factory=RolloutChecks)

    @model_validator(mode="after")
    def _steps_reach_the_top(self) -> RolloutPolicy:
        if self.step_weight > self.max_weight:
            raise ValueError(
                f"rollout.step_weight ({self.step_weight:g}) must be <= rollout.max_weight "
                f"({self.max_weight:g})"
            )
        return self


class ModelConfig(_Strict):
    version_policy: VersionPolicy = Field(default_factory=LatestPolicy)
    labels: dict[str, LabelTarget] = Field(default_factory=dict)
    limits: ModelLimits = Field(default_factory=ModelLimits)
    capture_rate: float | None = Field(
        default=None, ge=0.0, le=1.0, description="IMGCLS_CAPTURE_RATE for this model"
    )
    gate: GateRule | None = Field(
        default=None,
        description="the evaluation gate's rule for new versions (read by train.py at publish)",
    )
    rollout: RolloutPolicy | None = Field(
        default=None,
        description="progressive canary of new blessed versions (python -m service.rollout)",
    )
    runtime: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9_-]*$",
        description="IMGCLS_RUNTIME for this model: auto, savedmodel, an artifact (openvino-int8) "
        "or a runtime (openvino); applies to the versions loaded after the change",
    )

    @model_validator(mode="after")
    def _rollout_fits_beside_the_other_weights(self) -> ModelConfig:
        """The controller raises the ``canary`` label up to ``max_weight``: with the other
        labels' weights that must stay within 1, or its edits would never validate."""
        if self.rollout is not None:
            others = sum(t.weight for name, t in self.labels.items() if name != "canary")
            if self.rollout.max_weight + others > 1.0 + 1e-9:
                raise ValueError(
                    f"rollout.max_weight ({self.rollout.max_weight:g}) and the other labels' "
                    f"weights ({others:g}) add up to more than 1"
                )
        return self

    @field_validator("labels", mode="before")
    @classmethod
    def _plain_versions(cls, value: object) -> object:
        """``stable: 3`` is short for ``stable: {version: 3}``."""
        if isinstance(value, dict):
            return {
                key: {"version": target} if isinstance(target, int) else target
                for key, target in value.items()
            }
        return value

    @field_validator("labels")
    @classmethod
    def _label_names(cls, value: dict[str, LabelTarget]) -> dict[str, LabelTarget]:
        for name in value:
            if not re.match(LABEL_PATTERN, name):
                raise ValueError(
                    f"label {name!r}: use letters, digits, '-' and '_', starting with a letter"
                )
        total = sum(target.weight for target in value.values())
        if total > 1.0 + 1e-9:
            raise ValueError(f"label weights add up to {total:g}; at most 1 in all")
        return value

    def describe_policy(self) -> str:
        policy = self.version_policy
        if isinstance(policy, LatestPolicy):
            return f"latest {policy.latest}"
        if isinstance(policy, SpecificPolicy):
            return f"specific {sorted(policy.specific)}"
        return "all"


class ServingConfig(_Strict):
    models: dict[str, ModelConfig] = Field(default_factory=dict)

    def for_model(self, name: str) -> ModelConfig:
        return self.models.get(name) or DEFAULT_MODEL_CONFIG


DEFAULT_MODEL_CONFIG = ModelConfig()
DEFAULT_CONFIG = ServingConfig()


def select_versions(policy: VersionPolicy, candidates: list[int]) -> list[int]:
    """The versions ``policy`` serves out of ``candidates`` (loadable, on disk), newest first."""
    newest_first = sorted(set(candidates), reverse=True)
    if isinstance(policy, LatestPolicy):
        return newest_first[: policy.latest]
    if isinstance(policy, SpecificPolicy):
        wanted = set(policy.specific)
        return [v for v in newest_first if v in wanted]
    return newest_first


def parse_config(text: str, source: str = CONFIG_FILE) -> ServingConfig:
    """Parse and validate the YAML text of a configuration file."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ServingConfigError(f"{source}: {problem}{where}") from None
    if raw is None:
        return DEFAULT_CONFIG
    if not isinstance(raw, dict):
        raise ServingConfigError(f"{source}: expected a mapping with a 'models' key")
    try:
        return ServingConfig.model_validate(raw)
    except ValidationError as exc:
        problems = describe_problems(exc)
        shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
        extra = len(problems) - MAX_PROBLEMS_SHOWN
        more = f" (and {extra} more)" if extra > 0 else ""
        count = f"{len(problems)} problems: " if len(problems) > 1 else ""
        raise ServingConfigError(f"{source}: {count}{shown}{more}") from None


#: Problems of one invalid file named in its message (the rest are counted).
MAX_PROBLEMS_SHOWN = 3
#: What a ``version_policy`` may be, for the one message every wrong policy gets.
POLICY_FORMS = "must be {latest: N}, {specific: [versions]} or all"


def describe_problems(exc: ValidationError) -> list[str]:
    """Each problem of the file once, as ``where: what``, in the file's own terms.

    pydantic names the members of a union in its locations (``LatestPolicy``,
    ``literal['all']``) and reports a wrong value once per member; a user wrote none of those
    names, and made one mistake: the members are dropped from the location, and a policy that
    matches no form is one problem that lists the forms. pydantic's ``Value error, `` prefix
    goes too.
    """
    problems: list[str] = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        if "version_policy" in loc:
            at = loc.index("version_policy")
            where = ".".join(loc[: at + 1])
            field = loc[at + 2 :]  # after the union member's name: the key the user wrote
            if field and error["type"] not in ("extra_forbidden", "missing"):
                problem = f"{where}.{'.'.join(field)}: {error['msg']}"  # e.g. latest: 0
            else:
                problem = f"{where}: {POLICY_FORMS}"
        else:
            where = ".".join(loc)
            message = str(error["msg"]).removeprefix("Value error, ")
            message = re.sub(r" or instance of \w+", "", message)  # our class names
            problem = f"{where}: {message}" if where else message
        if problem not in problems:
            problems.append(problem)
    # A policy whose form is right but whose value is not ({latest: 0}): that message alone.
    precise = {
        problem.split(": ", 1)[0].rsplit(".", 1)[0]
        for problem in problems
        if ".version_policy." in problem.split(": ", 1)[0]
    }
    return [
        problem
        for problem in problems
        if not (problem.endswith(POLICY_FORMS) and problem.split(": ", 1)[0] in precise)
    ]


@dataclass
class ConfigState:
    """What the watcher knows: the configuration in force and the last problem, if any."""

    config: ServingConfig
    problem: str | None = None
    digest: str | None = None  # sha256 of the file in force or last rejected; None: no file
    changed: bool = False


class ConfigWatcher:
    """Re-reads ``serving.yaml`` when its content changes; keeps the last good one on errors."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.state = ConfigState(DEFAULT_CONFIG)

    @property
    def config(self) -> ServingConfig:
        return self.state.config

    @property
    def problem(self) -> str | None:
        return self.state.problem

    def refresh(self) -> ConfigState:
        """Read the file if it changed; returns the state with ``changed`` set accordingly."""
        state = self.state
        state.changed = False
        try:
            data = _read_bounded(self.path)
        except FileNotFoundError:
            if state.digest is not None:
                logger.info("%s removed: every model serves its latest version", self.path)
                self.state = ConfigState(DEFAULT_CONFIG, changed=True)
            return self.state
        except OSError as exc:
            return self._reject(f"cannot read {self.path}: {exc}", "unreadable")  # present
        digest = hashlib.sha256(data).hexdigest()
        if digest == state.digest:
            return state
        try:
            config = parse_config(data.decode("utf-8", errors="replace"), self.path.name)
        except ServingConfigError as exc:
            return self._reject(str(exc), digest)
        logger.info("serving configuration %s loaded", self.path)
        self.state = ConfigState(config, problem=None, digest=digest, changed=True)
        return self.state

    def _reject(self, problem: str, digest: str | None) -> ConfigState:
        if problem != self.state.problem:
            kept = (
                "keeping the last good serving configuration"
                if self.state.config is not DEFAULT_CONFIG or self.state.digest is not None
                else "no good configuration yet: every model serves its latest version"
            )
            logger.warning("%s; %s", problem, kept)
        self.state.problem = problem
        self.state.digest = digest
        return self.state


def _read_bounded(path: Path) -> bytes:
    with path.open("rb") as handle:
        data = handle.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise OSError(f"larger than {MAX_CONFIG_BYTES} bytes")
    return data
