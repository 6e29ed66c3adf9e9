"""A llama.cpp build the harness refuses is refused before use, with the command that fixes it."""

from __future__ import annotations

import pytest

from conftest import needs_llamacpp
from crossval.backends.llamacpp import REBUILD, refused_build

AVX512 = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | AVX512 = 1 | AVX512_VNNI = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |"


def test_an_amx_build_is_refused_with_the_rebuild_command():
    why = refused_build(AVX512.replace("LLAMAFILE", "AMX_INT8 = 1 | LLAMAFILE"))
    assert why and "AMX_INT8 = 1" in why and REBUILD in why and "\n" not in why
    assert "-mno-amx-int8" in REBUILD and "--no-cache-dir" in REBUILD


@pytest.mark.parametrize("info", [AVX512, AVX512.replace("AVX512 = 1", "AVX512 = 0"), ""])
def test_builds_without_amx_are_accepted(info):
    assert refused_build(info) is None


@needs_llamacpp
def test_the_installed_reference_is_one_the_harness_accepts():
    import llama_cpp

    assert refused_build(llama_cpp.llama_print_system_info().decode(errors="replace")) is None
