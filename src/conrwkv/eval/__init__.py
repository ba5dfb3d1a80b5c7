"""Evaluation shared by the experiments: corpus word error rate under two normalisers (wer) and
output names that no earlier evaluation used (fresh_names)."""
