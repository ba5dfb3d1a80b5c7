"""Training: Lightning modules for LM and ASR, the learning-rate schedule, checkpoints, CLI."""
