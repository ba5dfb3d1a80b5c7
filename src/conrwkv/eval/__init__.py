"""Evaluation: corpus word error rate for speech recognition (wer) and in-context-learning losses
against the Bayes-optimal estimator (icl)."""
