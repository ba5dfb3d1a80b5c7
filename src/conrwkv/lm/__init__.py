"""The RWKV-ICL experiment (and language-model training in general): the binidx data module, the
Lightning module, train / eval, the in-context-learning evaluation against the Bayes-optimal
estimator, and the sweep over Markov order, conv kernel and depth."""
