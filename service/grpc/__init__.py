"""The gRPC front end: the Open Inference Protocol V2 and TF Serving's APIs over gRPC, health
checking and reflection, beside HTTP in the same process (:mod:`.server`)."""
