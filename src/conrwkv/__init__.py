"""Con-RWKV: RWKV-6 with an optional causal convolution, for speech recognition by state
tuning (RWKV-ASR) and for in-context learning of Markov chains (RWKV-ICL)."""

__version__ = "0.1.0"
