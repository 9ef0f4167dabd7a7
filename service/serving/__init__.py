"""The serving core: model versions on disk and in memory, the batcher, the model call, the
decode step and explanations. It knows nothing of HTTP or gRPC: it raises domain errors
(:mod:`service.serving.errors`) that the edge turns into status codes."""
