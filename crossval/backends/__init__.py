"""The backends, by the name `--engine` / `--reference` / `--third` give them (docs/backends.md).

Adding one: write a `crossval.backends.base.Backend` subclass in its own module and add a line
here. A spec is NAME or NAME:ARG (ARG goes to `from_settings`, e.g. external:CMD's command).
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

from crossval.backends.base import Backend, BackendSettings
from crossval.errors import InputError

# name → (module, class); imported only when used (llama.cpp, torch, the gemma.cpp kit are heavy)
BACKENDS = {
    "engine": ("crossval.backends.engine", "EngineBackend"),
    "llamacpp": ("crossval.backends.isolated", "IsolatedLlamaCpp"),
    "gemmacpp": ("crossval.backends.gemmacpp", "GemmaCpp"),
    "bitnetcpp": ("crossval.backends.bitnetcpp", "BitnetCpp"),
    "external": ("crossval.backends.external", "ExternalBackend"),
    "transformers": ("crossval.backends.transformers_hf", "TransformersBackend"),
}
TAKES_ARG = {"external"}  # external:CMD
OPTIONAL_ARG = {"bitnetcpp"}  # bitnetcpp:i2s — bitnet.cpp on its own I2_S quantization of the model


def backend_class(spec: str) -> type[Backend]:
    name = spec.split(":", 1)[0]
    if name not in BACKENDS or (name not in OPTIONAL_ARG and (name in TAKES_ARG) != (":" in spec)):
        known = ", ".join(n + (":CMD" if n in TAKES_ARG else "") for n in BACKENDS)
        raise InputError(f"unknown backend {spec!r} (available: {known})")
    module, cls = BACKENDS[name]
    return getattr(import_module(module), cls)


def make_backend(spec: str, model_path: Path, settings: BackendSettings) -> Backend:
    """A started backend for `spec` (e.g. "engine", "llamacpp", "external:python -m crossval.serve").
    The caller closes it (`with make_backend(...) as b:`)."""
    cls = backend_class(spec)
    arg = spec.split(":", 1)[1] if ":" in spec else None
    return cls.from_settings(Path(model_path), settings, arg) if arg is not None else cls.from_settings(Path(model_path), settings)
