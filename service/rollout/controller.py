"""The rollout controller: one per deployment; each tick, for every model of ``serving.yaml``
with a ``rollout:`` section, decide (``service.rollout.decide``) and act.

State lives in the two files, never only in memory: the labels and weights in
``serving.yaml`` (the truth: a hand edit or an operator's command wins, and the interval
restarts), the rest (failed checks, paused, rolled-back versions, when the interval began) in
the last ``rollout.log`` line of the model. A restarted controller resumes from both: it
takes no step before a whole interval has been judged at the weight in the file, and it only
ever writes one ``canary`` label.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.metadata import InvalidModelVersionError, list_versions, read_metadata
from service.rollout import journal, serving_file
from service.rollout.decide import (
    CANARY,
    PREVIOUS,
    STABLE,
    Action,
    Decision,
    ModelView,
    decide,
)
from service.rollout.metrics import RolloutMetrics
from service.rollout.sources import MetricsSource, SourceError
from service.serving.config import ModelConfig, ServingConfig, ServingConfigError

logger = logging.getLogger(__name__)

Labels = tuple[int | None, int | None, float, int | None]  # stable, canary, weight, previous


def labels_of(config: ModelConfig) -> Labels:
    """The labels the controller owns, as the file has them."""
    labels = config.labels
    stable = labels.get(STABLE)
    canary = labels.get(CANARY)
    previous = labels.get(PREVIOUS)
    return (
        stable.version if stable else None,
        canary.version if canary else None,
        canary.weight if canary else 0.0,
        previous.version if previous else None,
    )


def _rolled_back(entry: dict[str, Any] | None) -> dict[int, str]:
    raw = (entry or {}).get("rolled_back") or {}
    result: dict[int, str] = {}
    if isinstance(raw, dict):
        for version, reason in raw.items():
            try:
                result[int(version)] = str(reason)
            except ValueError:
                continue
    return result


def view_of(
    config: ModelConfig, last: dict[str, Any] | None, blessed: frozenset[int] = frozenset()
) -> ModelView:
    """A model's view from its labels in the file and its last journal line: the counts
    carry over only while the canary is the one that line was about."""
    stable, canary, weight, previous = labels_of(config)
    last = last or {}
    same_canary = canary is not None and last.get("canary") == canary
    return ModelView(
        stable=stable,
        canary=canary,
        weight=weight,
        previous=previous,
        blessed=blessed,
        rolled_back=_rolled_back(last),
        paused=bool(last.get("paused", False)),
        failures=int(last.get("failures", 0)) if same_canary else 0,
        held=int(last.get("held", 0)) if same_canary else 0,
    )


def make_entry(
    model: str,
    decision: Decision,
    *,
    at: float,
    by: str,
    paused: bool,
    rolled_back: dict[int, str],
) -> dict[str, Any]:
    """One ``rollout.log`` line (see ``service.rollout.journal``)."""
    return {
        "time": round(at, 3),
        "model": model,
        "decision": decision.action.value,
        "by": by,
        "stable": decision.stable,
        "canary": decision.canary,
        "weight": decision.weight,
        "previous": decision.previous,
        "failures": decision.failures,
        "held": decision.held,
        "paused": paused,
        "rolled_back": {str(v): reason for v, reason in sorted(rolled_back.items())},
        "reason": decision.reason,
        "checks": [check.to_json() for check in decision.checks],
        "requests": {side: round(count, 3) for side, count in decision.requests.items()},
    }


def write_decision(path: Path, model: str, decision: Decision) -> ServingConfig:
    """Write the labels ``decision`` leaves (call under the file's lock)."""
    set_to: dict[str, tuple[int, float]] = {}
    remove: list[str] = []
    if decision.stable is not None:
        set_to[STABLE] = (decision.stable, 0.0)
    if decision.canary is not None:
        set_to[CANARY] = (decision.canary, decision.weight)
    else:
        remove.append(CANARY)
    if decision.previous is not None:
        set_to[PREVIOUS] = (decision.previous, 0.0)
    else:
        remove.append(PREVIOUS)
    return serving_file.write_labels(path, model, set_to=set_to, remove=tuple(remove))


@dataclass
class _Tracked:
    """What the controller remembers of one model between ticks."""

    labels: Labels
    interval_start: float  # Unix seconds


class Controller:
    """See the module docstring. ``clock`` is Unix seconds (``time.time``)."""

    def __init__(
        self,
        models_dir: Path,
        source: MetricsSource,
        metrics: RolloutMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.models_dir = models_dir
        self.config_path = serving_file.config_path(models_dir)
        self.journal_path = journal.journal_path(models_dir)
        self.source = source
        self.metrics = metrics or RolloutMetrics()
        self.clock = clock
        self._tracked: dict[str, _Tracked] = {}
        self._follower = journal.Follower(self.journal_path)
        self._last: dict[str, dict[str, Any]] = {}
        for entry in self._follower.new_entries():
            self._last[entry["model"]] = entry
        for model, entry in self._last.items():
            self.metrics.paused.labels(model=model).set(1 if entry.get("paused") else 0)
        self._blessed_cache: dict[tuple[str, int], tuple[tuple[int, int], bool]] = {}
        self._config_problem: str | None = None
        self._model_problems: dict[str, str] = {}

    # --- reading -------------------------------------------------------------------------
    def _read_config(self) -> ServingConfig | None:
        try:
            config, _text = serving_file.read(self.config_path)
        except FileNotFoundError:
            return None
        except (OSError, ServingConfigError) as exc:
            problem = str(exc)
            if problem != self._config_problem:
                logger.warning("%s: nothing changes until it is fixed", problem)
            self._config_problem = problem
            return None
        self._config_problem = None
        return config

    def blessed_versions(self, model: str, on_disk: list[int]) -> frozenset[int]:
        """Those of ``on_disk`` (``model``'s versions) whose metadata is readable and says
        blessed."""
        model_dir = self.models_dir / model
        found = set()
        for version in on_disk:
            path = model_dir / str(version) / "metadata.json"
            try:
                stat = path.stat()
            except OSError:
                continue
            fingerprint = (stat.st_mtime_ns, stat.st_size)
            cached = self._blessed_cache.get((model, version))
            if cached is None or cached[0] != fingerprint:
                try:
                    blessed = read_metadata(model_dir / str(version)).blessed
                except InvalidModelVersionError:
                    blessed = False  # unreadable: not a candidate until it is
                cached = self._blessed_cache[(model, version)] = (fingerprint, blessed)
            if cached[1]:
                found.add(version)
        return frozenset(found)

    def _follow_journal(self) -> set[str]:
        """Take in the lines appended since the last look; returns the models an operator's
        command (``"by": "operator"``) touched. Those are counted in the metrics as if the
        controller had decided them, and their interval starts again (a resume is judged on
        traffic after it, not before)."""
        touched = set()
        for entry in self._follower.new_entries():
            model = entry["model"]
            self._last[model] = entry
            if entry.get("by") != "controller":
                touched.add(model)
                self.metrics.record_entry(entry)
                self._tracked.pop(model, None)
        return touched

    # --- one tick ------------------------------------------------------------------------
    def tick(self) -> list[tuple[str, Decision]]:
        """One pass over the models; returns the decisions taken."""
        config = self._read_config()
        if config is None:
            return []
        self._follow_journal()
        rolled_out = {name for name, model in config.models.items() if model.rollout is not None}
        for gone in set(self._tracked) - rolled_out:  # its section or rollout: was removed
            del self._tracked[gone]
            self.metrics.forget(gone)
        taken = []
        for model in sorted(rolled_out):
            decision = self._tick_model(model, config.models[model])
            if decision is not None:
                taken.append((model, decision))
        return taken

    def _problem(self, model: str, problem: str | None) -> None:
        """Log a model's configuration problem once (and its end)."""
        if problem != self._model_problems.get(model):
            if problem:
                logger.warning("%s: %s; nothing is rolled out until it is fixed", model, problem)
            else:
                logger.info("%s: the configuration problem is gone", model)
        if problem:
            self._model_problems[model] = problem
        else:
            self._model_problems.pop(model, None)

    def _track(self, model: str, labels: Labels, now: float) -> _Tracked:
        """The model's interval: resumed from the journal when the file still has the labels
        the journal's last line left, else started now. Labels that changed without a line
        (a hand edit, or a crash between the file and the line) are recorded: a canary that
        disappeared is rolled back ("removed by hand"), never restarted; one that became
        stable is promoted."""
        tracked = self._tracked.get(model)
        if tracked is not None and tracked.labels == labels:
            return tracked
        self.metrics.know(model)
        last = self._last.get(model) or {}
        recorded: Labels = (
            last.get("stable"),
            last.get("canary"),
            last.get("weight", 0.0),
            last.get("previous"),
        )
        before = tracked.labels if tracked is not None else (recorded if last else None)
        if tracked is None and last and recorded == labels:
            # Resumed: no begin() here. A source with history (Prometheus) judges the time
            # since that line; one without (scrapes) takes its baseline at the first look.
            tracked = self._tracked[model] = _Tracked(labels, float(last.get("time", now)))
            self.metrics.show(model, labels[0], labels[1], labels[2])
            return tracked
        if before is not None:
            logger.info(
                "%s: serving.yaml changed outside the controller (stable %s, canary %s at %g, "
                "previous %s): the interval starts again",
                model,
                *labels,
            )
            self._record_hand_edit(model, before, labels, now)
        tracked = self._tracked[model] = _Tracked(labels, now)
        self.metrics.show(model, labels[0], labels[1], labels[2])
        self.source.begin(model)
        return tracked

    def _record_hand_edit(self, model: str, before: Labels, labels: Labels, now: float) -> None:
        gone = before[1]
        if gone is None or labels[1] == gone:
            return
        last = self._last.get(model) or {}
        rolled_back = _rolled_back(last)
        stable, canary, weight, previous = labels
        if stable == gone:
            action, reason = (
                Action.PROMOTE,
                f"serving.yaml edited by hand: version {gone} is stable",
            )
        else:
            action = Action.ROLLBACK
            reason = f"version {gone}: canary label removed from serving.yaml by hand"
            rolled_back.setdefault(gone, reason)
        decision = Decision(action, stable, canary, weight, previous, 0, 0, reason)
        entry = make_entry(
            model,
            decision,
            at=now,
            by="operator",
            paused=bool(last.get("paused")),
            rolled_back=rolled_back,
        )
        logger.info("%s: %s recorded: %s", model, action.value, reason)
        with serving_file.locked(self.config_path):
            journal.append(self.journal_path, entry)  # counted when the follower reads it
        self._last[model] = entry

    def _tick_model(self, model: str, config: ModelConfig) -> Decision | None:
        assert config.rollout is not None
        policy = config.rollout
        now = self.clock()
        labels = labels_of(config)
        stable = labels[0]
        on_disk = list_versions(self.models_dir / model)
        if stable is not None and stable not in on_disk:
            self._problem(model, f"the stable label names version {stable}, which is not on disk")
            return None
        self._problem(model, None)
        tracked = self._track(model, labels, now)
        view = view_of(config, self._last.get(model), self.blessed_versions(model, on_disk))
        elapsed = now - tracked.interval_start
        traffic = None
        if view.canary is not None and not view.paused and elapsed >= policy.interval_s:
            try:
                traffic = self.source.traffic(model, elapsed)
            except SourceError as exc:
                logger.warning("%s: metrics unreadable, nothing judged: %s", model, exc)
                return None
            if traffic is None:  # the source's first look: a whole interval from now on
                tracked.interval_start = now
                return None
        decision = decide(view, policy, elapsed_s=elapsed, traffic=traffic)
        if decision is None:
            return None
        if not self._apply(model, labels, view, decision):
            return None
        return decision

    def _apply(self, model: str, seen: Labels, view: ModelView, decision: Decision) -> bool:
        """Under the lock: unless an operator's command or an edit of the labels came in since
        the view was taken (then the next tick judges again), write the decision's labels and
        its line."""
        with serving_file.locked(self.config_path):
            if model in self._follow_journal():
                logger.info("%s: an operator acted during the decision: judged again", model)
                return False
            current = self._read_config()
            if current is None or labels_of(current.for_model(model)) != seen:
                logger.info("%s: serving.yaml changed during the decision: judged again", model)
                return False
            now = self.clock()
            rolled_back = dict(view.rolled_back)
            if decision.action is Action.ROLLBACK and view.canary is not None:
                rolled_back.setdefault(view.canary, decision.reason)
            new_labels: Labels = (
                decision.stable,
                decision.canary,
                decision.weight,
                decision.previous,
            )
            if new_labels != seen:
                try:
                    write_decision(self.config_path, model, decision)
                except (OSError, ServingConfigError) as exc:
                    logger.error("%s: cannot write %s: %s", model, self.config_path, exc)
                    return False
            self._tracked[model] = _Tracked(new_labels, now)
            self._append(model, decision, now, "controller", view.paused, rolled_back)
        self.source.begin(model)
        return True

    def _append(
        self,
        model: str,
        decision: Decision,
        now: float,
        by: str,
        paused: bool,
        rolled_back: dict[int, str],
    ) -> None:
        entry = make_entry(model, decision, at=now, by=by, paused=paused, rolled_back=rolled_back)
        journal.append(self.journal_path, entry)
        self._last[model] = entry
        self.metrics.record(model, decision, now)
        weight = f" at {decision.weight:g}" if decision.canary is not None else ""
        logger.info(
            "%s: %s (stable %s, canary %s%s): %s",
            model,
            decision.action.value,
            decision.stable,
            decision.canary,
            weight,
            decision.reason,
        )

    def run_forever(self, tick_s: float = 1.0) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # one bad tick (a full disk, say) must not end the controller
                logger.exception("rollout tick failed; trying again")
            time.sleep(tick_s)
