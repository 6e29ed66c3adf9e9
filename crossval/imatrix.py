"""Importance matrices as llama.cpp's imatrix tool makes and stores them, from the engine's activations.

llama.cpp's low-bit quantizers weigh each input column of a matrix by how large its activations
are: for IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S and IQ3_XXS (src/llama-quant.cpp
tensor_requires_imatrix) it refuses to quantize without that weighting, and for the other IQ types
it chooses better values with it. The imatrix tool (tools/imatrix/imatrix.cpp collect_imatrix)
collects, for every matrix W = blk.*.weight multiplied by activations x (rows t, columns j) in a
batch of at least 16 rows,

    in_sum2[W][j] = Σ_t x[t, j]²        counts[W] = Σ_batches rows(x)

over `chunk_size`-token chunks of a text (tokenized with BOS, each chunk a fresh context whose
first token is BOS when the vocabulary adds one, the text cut to whole chunks, at least two), and
stores them as GGUF (save_imatrix): general.type = "imatrix", imatrix.datasets (string array),
imatrix.chunk_count and imatrix.chunk_size (u32); tensors "<W>.in_sum2" (ne = n_in × n_mat) and
"<W>.counts" (1 × n_mat), F32, sorted by name — n_mat = 1, or one row per expert of a 3-D expert
tensor, whose rows are collected per expert from every batch routed to it (MUL_MAT_ID, no floor). llama-quantize reads that file back and hands
llama_model_quantize the per-column means in_sum2 / counts (1 where a count is 0;
tools/quantize/quantize.cpp load_imatrix) — `quantize_weights` does the same here.

The activations are the engine's own (float mode, teacher-forced over each chunk). Our writer also
records general.architecture (gguf's writer always does); llama.cpp ignores it. The sums are formed
in float64 and stored as float32 (the tool adds float32 squares row by row; the difference is far
below what the quantizers' choices depend on).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crossval.errors import InputError

MIN_BATCH = 16  # collect_imatrix skips smaller batches
DEFAULT_CHUNK = 256
TEXT = Path(__file__).parent / "prompts" / "imatrix.txt"  # the calibration text (written for this project)


class ImatrixError(InputError):
    """Bad input for an importance matrix (one line, exit 2)."""


@dataclass
class Imatrix:
    sums: dict[str, np.ndarray] = field(default_factory=dict)  # W → Σ x² per input column, (n_mat, n_in) float32
    counts: dict[str, np.ndarray] = field(default_factory=dict)  # W → activation rows seen, (n_mat,) int64
    chunk_count: int = 0
    chunk_size: int = 0
    datasets: list[str] = field(default_factory=list)
    arch: str = "llama"  # the model's general.architecture (our writer records it; llama.cpp ignores it)


def compute(model_path: str | os.PathLike, text: str, chunk_size: int = DEFAULT_CHUNK, dataset: str = "") -> Imatrix:
    """Run the engine (float mode) over `text` in chunks as the imatrix tool does, collecting Σ x² and
    row counts of every blk.* matmul input. ImatrixError if the text has fewer than two chunks."""
    from engine.generate import Engine
    from engine.tokenizer import Tokenizer

    if chunk_size < MIN_BATCH:
        raise ImatrixError(f"chunk size {chunk_size} is below the tool's {MIN_BATCH}-row batch floor")
    eng = Engine(model_path, n_ctx=chunk_size, mode="float")
    vocab = Tokenizer.from_gguf(eng.gguf)
    tokens = vocab.encode(text, add_special=True)
    n_chunk = len(tokens) // chunk_size
    if n_chunk < 2:
        raise ImatrixError(f"the text has {len(tokens)} tokens: need at least two chunks of {chunk_size}")
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    w = eng.model.w
    real_matmul, real_expert = w.matmul, getattr(w, "matmul_expert", None)

    def add(name: str, x2: np.ndarray, mat: int, n_mat: int) -> None:
        if name not in sums:
            sums[name], counts[name] = np.zeros((n_mat, x2.shape[1])), np.zeros(n_mat, dtype=np.int64)
        sums[name][mat] += np.square(x2, dtype=np.float64).sum(axis=0)
        counts[name][mat] += x2.shape[0]

    def recording_matmul(x: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
        if not all(n.startswith("blk.") for n in names):  # the output projection: not collected, logits unused
            return np.zeros((*x.shape[:-1], sum(w.g.tensor(n).ne[1] for n in names)), dtype=np.float32)
        x2 = x.reshape(-1, x.shape[-1])
        if x2.shape[0] >= MIN_BATCH:
            for n in names:
                add(n, x2, 0, 1)
        return real_matmul(x, names)

    def recording_expert(x: np.ndarray, name: str, e: int) -> np.ndarray:
        add(name, x.reshape(-1, x.shape[-1]), int(e), int(w.g.tensor(name).ne[2]))
        return real_expert(x, name, e)

    w.matmul = recording_matmul
    if real_expert is not None:
        w.matmul_expert = recording_expert
    bos = vocab.vocab.bos if vocab.vocab.add_bos else None
    for c in range(n_chunk):
        chunk = list(tokens[c * chunk_size : (c + 1) * chunk_size])
        if bos is not None:
            chunk[0] = bos
        eng.logits(chunk)
    return Imatrix({n: s.astype(np.float32) for n, s in sorted(sums.items())}, dict(sorted(counts.items())), n_chunk, chunk_size,
                   [dataset] if dataset else [], str(eng.gguf.metadata.get("general.architecture", "llama")))  # fmt: skip


def write(im: Imatrix, path: str | os.PathLike) -> Path:
    """Store `im` in the imatrix tool's GGUF layout; written to a temporary name, then renamed."""
    import gguf

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{time.time_ns()}")
    wr = gguf.GGUFWriter(str(tmp), im.arch)
    wr.add_string("general.type", "imatrix")
    wr.add_array("imatrix.datasets", list(im.datasets))
    wr.add_uint32("imatrix.chunk_count", im.chunk_count)
    wr.add_uint32("imatrix.chunk_size", im.chunk_size)
    for name in sorted(im.sums):
        wr.add_tensor(f"{name}.in_sum2", np.ascontiguousarray(im.sums[name], dtype=np.float32))
        wr.add_tensor(f"{name}.counts", np.asarray(im.counts[name], dtype=np.float32).reshape(-1, 1))
    try:
        wr.write_header_to_file()
        wr.write_kv_data_to_file()
        wr.write_tensors_to_file()
        wr.close()
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read(path: str | os.PathLike) -> Imatrix:
    """An imatrix GGUF (ours or the tool's) → Imatrix (one count per matrix; experts are not modelled)."""
    import gguf

    try:
        r = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as e:
        raise ImatrixError(f"{path}: not an imatrix GGUF ({e})") from None
    im = Imatrix()
    fields = r.fields
    if "imatrix.chunk_count" in fields:
        im.chunk_count = int(fields["imatrix.chunk_count"].contents())
    if "imatrix.chunk_size" in fields:
        im.chunk_size = int(fields["imatrix.chunk_size"].contents())
    if "imatrix.datasets" in fields:
        im.datasets = list(fields["imatrix.datasets"].contents())
    if "general.architecture" in fields:
        im.arch = str(fields["general.architecture"].contents())
    for t in r.tensors:
        n_in, n_mat = int(t.shape[0]), int(np.prod(t.shape[1:]))
        if t.name.endswith(".in_sum2"):
            im.sums[t.name[: -len(".in_sum2")]] = np.asarray(t.data, dtype=np.float32).reshape(n_mat, n_in).copy()
        elif t.name.endswith(".counts"):
            im.counts[t.name[: -len(".counts")]] = np.rint(np.asarray(t.data, dtype=np.float64).reshape(-1)).astype(np.int64)
    if not im.sums or set(im.sums) != set(im.counts) or any(len(im.counts[n]) != im.sums[n].shape[0] for n in im.sums):
        raise ImatrixError(f"{path}: no imatrix data, or sums without counts")
    return im


def quantize_weights(im: Imatrix) -> dict[str, np.ndarray]:
    """What llama-quantize passes to llama_model_quantize: per matrix (and expert), in_sum2 / counts
    (1 where the count is 0), flattened, float32."""
    out = {}
    for n, s in im.sums.items():
        c = im.counts[n].astype(np.float32)[:, None]
        out[n] = np.where(c > 0, s / np.where(c > 0, c, 1), np.float32(1)).astype(np.float32).reshape(-1)
    return out


def text_digest(text: str, chunk_size: int) -> str:
    return hashlib.sha256(f"{chunk_size}\n{text}".encode()).hexdigest()[:12]


def cached(model: str, progress=None, chunk_size: int = DEFAULT_CHUNK) -> Path:
    """The importance matrix of a model (name or path) over the calibration text, computed once and
    kept in the crossval cache under <cache>/imatrix/, keyed by the model's and the text's hashes."""
    from crossval.models import cache_dir, resolve_model
    from engine.convert import sha256_file

    src = resolve_model(model)
    text = TEXT.read_text(encoding="utf-8")
    dst = cache_dir() / "imatrix" / f"{src.stem}.{sha256_file(src)[:16]}.{text_digest(text, chunk_size)}.imatrix.gguf"
    if dst.exists():
        return dst
    if progress:
        progress("imatrix", {"model": model})
    dst.parent.mkdir(parents=True, exist_ok=True)
    return write(compute(src, text, chunk_size, dataset=TEXT.name), dst)
