"""Speech recognition with a state-tuned (Con-)RWKV-6: the SLAM-ASR recipe (Ma et al. 2024, "An
Embarrassingly Simple Approach for LLM with Strong ASR Capacity") adapted by state tuning as in
RWKV-ASR. A frozen HuggingFace speech encoder feeds a trained projector whose embeddings, followed
by a separator, prompt a frozen RWKV-6 World model whose per-layer initial WKV state (and
optional Con-RWKV convolution) is trained; decoding runs in RNN mode with the state carried.
"""

from .decode import beam_search, decode, greedy_decode, max_new_tokens
from .encoder import SpeechEncoder
from .projector import Projector
from .speech_rwkv import SpeechRWKV

__all__ = ["Projector", "SpeechEncoder", "SpeechRWKV", "beam_search", "decode",
           "greedy_decode", "max_new_tokens"]
