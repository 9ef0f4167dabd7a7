"""Image-classification HTTP service: FastAPI app, model store, dynamic batcher, metrics."""
