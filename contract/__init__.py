"""What training and serving must agree on, defined once: the image decoder, the model
repository's metadata, and the names of the SavedModel endpoints and report files.

Training and the service both import this package; it imports neither of them, nor TensorFlow.
"""
