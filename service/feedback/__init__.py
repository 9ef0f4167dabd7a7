"""The loop from production back to training: prediction ids, captured inputs, labelled
feedback in the folder layout ``train.py --data`` reads, and prediction drift per version."""
