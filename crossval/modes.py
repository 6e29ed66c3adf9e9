"""Which arithmetic our engine runs when the user does not say (`--mode auto`, the default).

The strongest claim the harness can check is the default one:
- against llama.cpp or bitnet.cpp: `faithful` (the native kernels reproduce their CPU arithmetic
  bit for bit — bitnet.cpp's on its I2_S models) when the kernels are built here, else `float`
  with a one-line notice saying why;
- against gemma.cpp: `bf16` (gemma.cpp's bfloat16 rounding of matmul operands);
- against anything else (an external engine, transformers, the engine itself): `float`.
The side that is not our engine decides; with `--engine X --reference engine` that is X.
"""

from __future__ import annotations

AUTO = "auto"


def resolve_mode(mode: str, engine: str = "engine", reference: str = "llamacpp") -> tuple[str, str | None]:
    """(the mode to run, a one-line notice or None). An explicit mode is kept as given."""
    if mode != AUTO:
        return mode, None
    other = reference if engine == "engine" else engine
    if other in ("llamacpp", "bitnetcpp"):
        from engine import kernels

        if kernels.available():
            return "faithful", None
        return "float", f"float mode, not {'llama.cpp' if other == 'llamacpp' else 'bitnet.cpp'}'s arithmetic: {kernels.load_error()}"
    if other == "gemmacpp":
        return "bf16", None
    return "float", None
