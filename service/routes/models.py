"""``GET /models``: every model of the repository, its versions with their states, its labels,
policy and limits, and the serving configuration's health.

The top-level ``name``, ``serving`` and ``versions`` keys describe the default model (the one
``/predict`` serves), as before the repository served several models.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter

from service.deps import State
from service.feedback.drift import baseline_problem
from service.rollout import journal
from service.serving.config import CONFIG_FILE
from service.serving.repository import ServedModel

router = APIRouter(tags=["models"])


def describe_model(
    served: ServedModel,
    default_capture_rate: float = 0.0,
    rollout_entry: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One model: versions and states, labels, policy, limits, the default version's metadata
    (``serving``) and every served version's (``served``, newest first), its capture rate, per
    served version whether its drift is measured (else why not), and its rollout: the policy
    from serving.yaml and the controller's last decision (``rollout_entry``, a rollout.log
    line)."""
    default = served.default_version()
    problems = served.label_problems()
    rolled_back = (rollout_entry or {}).get("rolled_back") or {}
    return {
        "name": served.name,
        "default_version": default.version if default is not None else None,
        "policy": served.config.describe_policy(),
        "labels": {
            name: {
                "version": target.version,
                "weight": target.weight,
                "served": target.version in served.store.served,
                **({"problem": problems[name]} if name in problems else {}),
            }
            for name, target in sorted(served.config.labels.items())
        },
        "limits": asdict(served.limits),
        "serving": None
        if default is None
        else default.metadata.model_dump(mode="json", exclude={"files"}),
        "served": [
            model.metadata.model_dump(mode="json", exclude={"files"})
            for _, model in sorted(served.store.served.items(), reverse=True)
        ],
        "versions": [
            {
                "version": row.version,
                "state": row.state,
                **({"reason": row.reason} if row.reason else {}),
                **_runtime(served, row.version),
                **(
                    {"rolled_back": rolled_back[str(row.version)]}
                    if str(row.version) in rolled_back
                    else {}
                ),
            }
            for row in served.store.statuses()
        ],
        "rollout": {
            "policy": None
            if served.config.rollout is None
            else served.config.rollout.model_dump(mode="json"),
            "last_decision": rollout_entry,
        },
        "repository_problem": served.store.repository_problem,
        "capture_rate": (
            default_capture_rate
            if served.config.capture_rate is None
            else served.config.capture_rate
        ),
        "drift": {
            str(version): baseline_problem(
                model.metadata.drift_baseline, model.metadata.class_names
            )
            or "measured"
            for version, model in sorted(served.store.served.items(), reverse=True)
        },
    }


def _runtime(served: ServedModel, version: int) -> dict[str, Any]:
    """A served version's ``runtime``: what computes it, and why not what was asked
    (``fallback``, ``detail``) when it runs on its SavedModel instead."""
    model = served.store.served.get(version)
    if model is None:
        return {}
    choice = model.runtime
    runtime: dict[str, Any] = {"name": choice.name, "asked": served.store.runtime}
    if choice.fallback:
        runtime["fallback"] = choice.fallback
    if choice.detail:
        runtime["detail"] = choice.detail
    return {"runtime": runtime}


@router.get("/models", summary="Every model, its versions and states, labels and policy")
async def list_models(state: State) -> dict[str, Any]:
    repository = state.repository
    rate = state.settings.capture_rate
    rollouts = await asyncio.to_thread(
        journal.last_entries,
        journal.journal_path(repository.root),
        tail_bytes=journal.TAIL_BYTES,
    )
    models = [
        describe_model(repository.models[name], rate, rollouts.get(name))
        for name in repository.names()
    ]
    default = repository.default
    own = describe_model(default, rate, rollouts.get(default.name)) if default is not None else None
    watcher = repository.config_watcher
    return {
        "name": repository.default_name,
        "serving": own["serving"] if own else None,
        "versions": own["versions"] if own else [],
        "repository_problem": own["repository_problem"] if own else None,
        "default_model": repository.default_name,
        "models": models,
        "config": {
            "file": str(repository.root / CONFIG_FILE),
            "present": watcher.state.digest is not None,
            "problem": watcher.problem,
        },
    }
