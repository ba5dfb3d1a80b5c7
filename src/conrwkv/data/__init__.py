"""Data: the World tokenizer, binidx token files and their sampling, Markov-chain data, resumable
batching, speech corpora (speech/) and the tools that make an offline speech corpus (offline/)."""
