"""The progressive rollout: one controller per deployment moves a new blessed version from
canary to stable in steps, judging it against stable from the replicas' metrics, and rolls it
back when it misbehaves (``python -m service.rollout``).

The controller writes only ``serving.yaml`` (labels and weights, which every replica already
follows) and ``rollout.log`` beside it; it never talks to the replicas except to read metrics.
"""
