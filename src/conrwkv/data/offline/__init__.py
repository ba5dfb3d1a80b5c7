"""Offline speech data, for running RWKV-ASR where nothing can be downloaded: a synthetic corpus
spoken by espeak-ng and flite (synth), its Opus transport pack (corpus_pack) and English LM text
from Debian packages (text_sources: one reader per package; lm_text: the binidx builder)."""
