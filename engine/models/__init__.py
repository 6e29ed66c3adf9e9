"""Architecture → model class."""

from __future__ import annotations

from engine.gguf_model import GGUFError, GGUFFile, ModelConfig
from engine.models.bitnet import BitnetModel
from engine.models.families import FAMILIES, FamilyModel
from engine.models.gemma import GemmaModel
from engine.models.llama import LlamaModel

MODEL_CLASSES = {
    "llama": LlamaModel,
    "gemma": GemmaModel,
    "gemma2": GemmaModel,
    "gemma3": GemmaModel,
    "bitnet": BitnetModel,
    "bitnet-25": BitnetModel,
    "bitnet-b1.58": BitnetModel,
    **{arch: FamilyModel for arch in FAMILIES},
}


def build_model(g: GGUFFile, cfg: ModelConfig, mode: str = "float", threads: int = 1, simd_target: str | None = None,
                gemmacpp_workers: int = 2):  # fmt: skip
    """simd_target: mode bf16's gemma.cpp Highway target (engine/kernels/gemmacpp.py Target.named);
    gemmacpp_workers: gemma.cpp's thread-pool size (engine/models/gemmacpp.py)."""
    if mode == "bf16" and cfg.arch in ("gemma", "gemma2", "gemma3"):
        from engine.models.gemmacpp import GemmaCppModel

        return GemmaCppModel(g, cfg, simd_target=simd_target, threads=threads, workers=gemmacpp_workers)
    cls = MODEL_CLASSES.get(cfg.arch)
    if cls is None:
        raise GGUFError(f"{g.path.name}: architecture {cfg.arch!r} has no forward pass yet")
    return cls(g, cfg, mode=mode, threads=threads)
