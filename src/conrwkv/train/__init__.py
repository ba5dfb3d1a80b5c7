"""The training engine both experiments share: the Lightning Trainer set-up, step checkpoints and
exact resume, guards against a diverged run, optimizer groups, the learning-rate schedule, and
command-line flags generated from the configuration dataclasses."""
