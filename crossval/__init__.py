"""crossval: the parity harness (engine vs llama.cpp and other reference engines)."""

__version__ = "0.1.0"
