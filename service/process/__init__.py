"""Process management: the command-line runner, the supervisor of worker processes, the probe
worker's cost report, and TensorFlow's start-up."""
