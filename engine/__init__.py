"""engine: a Python GGUF inference engine (llama, gemma 1/2/3, bitnet). Knows nothing of crossval."""
