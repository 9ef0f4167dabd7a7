"""An operator's commands: ``pause``, ``resume``, ``promote`` and ``rollback`` of one model's
rollout, acted on at once (under the same lock as the controller) and recorded in
``rollout.log`` with ``"by": "operator"``. They work whether or not a controller runs; a
running one follows them at its next tick."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from service.rollout import journal, serving_file
from service.rollout.controller import labels_of, make_entry, view_of, write_decision
from service.rollout.decide import Action, Decision, decision_from
from service.serving.config import ServingConfigError

#: The commands, each with what it does (``--help``).
COMMANDS = {
    "pause": "freeze the rollout: weights stay as they are until resume",
    "resume": "let a paused rollout go on (its interval starts again)",
    "promote": "make the canary stable now (the old stable keeps a weight-0 'previous' label)",
    "rollback": "remove the canary now; its version is never tried again automatically",
}


class OverrideError(ValueError):
    """The command cannot apply (no such model, no canary); the message says why."""


def override(
    models_dir: Path, model: str, command: str, clock: Callable[[], float] = time.time
) -> Decision:
    """Carry out ``command`` on ``model``; returns the decision recorded."""
    path = serving_file.config_path(models_dir)
    journal_path = journal.journal_path(models_dir)
    with serving_file.locked(path):
        try:
            config, _text = serving_file.read(path)
        except FileNotFoundError:
            raise OverrideError(f"{path} does not exist: no rollout to act on") from None
        except (OSError, ServingConfigError) as exc:
            raise OverrideError(str(exc)) from None
        if model not in config.models:
            known = ", ".join(sorted(config.models)) or "none"
            raise OverrideError(f"model {model!r} is not in {path} (models there: {known})")
        model_config = config.models[model]
        last = journal.last_entries(journal_path).get(model)
        view = view_of(model_config, last)
        base = decision_from(view, Action.PAUSE, "")
        paused = view.paused
        rolled_back = dict(view.rolled_back)
        if command == "pause":
            decision = replace(base, action=Action.PAUSE, reason="paused by an operator")
            paused = True
        elif command == "resume":
            decision = replace(base, action=Action.RESUME, reason="resumed by an operator")
            paused = False
        elif command in ("promote", "rollback"):
            if view.canary is None:
                raise OverrideError(
                    f"model {model!r} has no canary label in {path}: nothing to {command}"
                )
            if command == "promote":
                decision = replace(
                    base,
                    action=Action.PROMOTE,
                    stable=view.canary,
                    canary=None,
                    weight=0.0,
                    previous=view.stable,
                    failures=0,
                    held=0,
                    reason=f"version {view.canary} promoted by an operator",
                )
            else:
                reason = f"version {view.canary} rolled back by an operator"
                decision = replace(
                    base, action=Action.ROLLBACK, canary=None, weight=0.0, held=0, reason=reason
                )
                rolled_back.setdefault(view.canary, reason)
        else:
            raise OverrideError(f"unknown command {command!r}: one of {', '.join(COMMANDS)}")
        new_labels = (decision.stable, decision.canary, decision.weight, decision.previous)
        if new_labels != labels_of(model_config):
            try:
                write_decision(path, model, decision)
            except ServingConfigError as exc:
                raise OverrideError(str(exc)) from None
        now = clock()
        entry = make_entry(
            model, decision, at=now, by="operator", paused=paused, rolled_back=rolled_back
        )
        journal.append(journal_path, entry)
    return decision
