"""Data: tokenizer, binidx token files, Markov-chain generator, speech corpora."""
