"""Open a GGUF file: metadata → ModelConfig, tensors as zero-copy views of the mapped file.

Why not gguf.GGUFReader for opening: it builds one numpy memmap slice per array *element*, so the
token lists of our real models take 5 s (SmolLM2, 49k tokens) and 24 s (gemma-3, 262k tokens) to
open. This module walks the same format (spec: gguf-py/gguf/constants.py, ggml/src/gguf.cpp) with
struct.unpack_from, keeps numeric arrays as numpy views of the mmap, and decodes string arrays only
when asked. Everything else comes from the gguf package: type enums, block sizes
(GGML_QUANT_SIZES; engine/quants.py QUANT_SIZES adds the upstream types the package predates, Q2_0),
and dequantization (engine/quants.py). tests/test_gguf_model.py checks that
this reader and GGUFReader agree field by field and tensor by tensor.

Every malformed-file condition raises GGUFError with a one-line message; nothing is allocated in
proportion to a count the header claims until that count has been checked against the file size.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType

from engine.quants import I2_S, I2_S_GROUP, QUANT_SIZES, ggml_type, i2_s_nbytes

GGUF_MAGIC = 0x46554747  # b"GGUF" little-endian
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME_LEN = 65536  # keys and tensor names are identifiers; a longer one is a corrupt length


class GGUFError(ValueError):
    """The file is not a usable GGUF (one-line, user-facing message)."""


_SCALAR = {
    GGUFValueType.UINT8: ("<B", 1),
    GGUFValueType.INT8: ("<b", 1),
    GGUFValueType.UINT16: ("<H", 2),
    GGUFValueType.INT16: ("<h", 2),
    GGUFValueType.UINT32: ("<I", 4),
    GGUFValueType.INT32: ("<i", 4),
    GGUFValueType.FLOAT32: ("<f", 4),
    GGUFValueType.BOOL: ("<?", 1),
    GGUFValueType.UINT64: ("<Q", 8),
    GGUFValueType.INT64: ("<q", 8),
    GGUFValueType.FLOAT64: ("<d", 8),
}
_NP = {
    GGUFValueType.UINT8: np.uint8,
    GGUFValueType.INT8: np.int8,
    GGUFValueType.UINT16: np.uint16,
    GGUFValueType.INT16: np.int16,
    GGUFValueType.UINT32: np.uint32,
    GGUFValueType.INT32: np.int32,
    GGUFValueType.FLOAT32: np.float32,
    GGUFValueType.BOOL: np.bool_,
    GGUFValueType.UINT64: np.uint64,
    GGUFValueType.INT64: np.int64,
    GGUFValueType.FLOAT64: np.float64,
}


class StringArray:
    """A GGUF array of strings, decoded on first access (token lists are large)."""

    def __init__(self, buf: memoryview, offset: int, count: int, end: int):
        self._buf, self._offset, self._count, self._end = buf, offset, count, end
        self._items: list[str] | None = None
        self._raw: list[bytes] | None = None

    def __len__(self) -> int:
        return self._count

    def raw(self) -> list[bytes]:
        if self._raw is None:
            buf, pos, out = self._buf, self._offset, []
            unpack = struct.Struct("<Q").unpack_from
            for _ in range(self._count):
                (n,) = unpack(buf, pos)
                pos += 8
                out.append(bytes(buf[pos : pos + n]))
                pos += n
            self._raw = out
        return self._raw

    def tolist(self) -> list[str]:
        if self._items is None:
            self._items = [b.decode("utf-8", errors="replace") for b in self.raw()]
        return self._items

    def __getitem__(self, i):
        return self.tolist()[i]

    def __iter__(self):
        return iter(self.tolist())

    def __eq__(self, other):
        return list(self) == list(other)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ne: tuple[int, ...]  # ggml order: ne[0] is the contiguous (row) length
    type: GGMLQuantizationType
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy order (rows last-to-first): e.g. a weight [n_in, n_out] in ggml → (n_out, n_in)."""
        return tuple(reversed(self.ne))

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.ne, dtype=np.int64)) if self.ne else 1


@dataclass
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any]
    value_types: dict[str, GGUFValueType]
    tensors: dict[str, TensorInfo]
    alignment: int
    data_offset: int
    file_size: int
    _mm: mmap.mmap | None = field(default=None, repr=False)
    _data: np.ndarray | None = field(default=None, repr=False, compare=False)  # make_resident's copy of [data_offset, file_size)

    # --- tensor access -------------------------------------------------------------------------
    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as stored, zero-copy: float types as their dtype in numpy shape,
        block-quantized types as uint8 rows of shape (…, bytes_per_row), I2_S (one scale per
        tensor, not rows of blocks) as its n/4 + 32 bytes."""
        t = self.tensor(name)
        if self._data is not None:
            buf = self._data[t.offset - self.data_offset : t.offset - self.data_offset + t.nbytes]
        else:
            buf = np.frombuffer(self._mm, dtype=np.uint8, count=t.nbytes, offset=t.offset)
        if t.type == I2_S:
            return buf
        if t.type == GGMLQuantizationType.F32:
            return buf.view(np.float32).reshape(t.shape)
        if t.type == GGMLQuantizationType.F16:
            return buf.view(np.float16).reshape(t.shape)
        block, size = QUANT_SIZES[t.type]
        rows = t.shape[:-1] or (1,)
        return buf.reshape(*rows, t.ne[0] // block * size)

    def make_resident(self) -> bool:
        """Copy the tensor data (file bytes [data_offset, file_size)) into anonymous memory the kernel is
        asked to back with 2 MiB pages (madvise MADV_HUGEPAGE: transparent huge pages); raw() returns
        views of the copy from then on — the same bytes, read-only as before. Why: a decode step streams
        every weight once, and through the file's mapping (4 KiB pages here) that is a TLB miss every
        4 KiB — on gemma-3-270m Q4_K_M one thread decodes ≈ 10 % faster from the copy (`crossval bench`,
        commit message). Done only where it can pay and is cheap: transparent huge pages not "never"
        and the data at most a quarter of MemAvailable (Linux; elsewhere nothing is copied).
        Idempotent; → whether raw() reads a copy."""
        if self._data is not None:
            return True
        n = self.file_size - self.data_offset
        if n <= 0 or not _huge_pages_affordable(n):
            return False
        huge = 2 << 20
        # private (a shared anonymous map is shmem, whose huge pages are off by default), 2 MiB over to align the start
        anon = mmap.mmap(-1, n + huge, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        anon.madvise(mmap.MADV_HUGEPAGE)
        whole = np.frombuffer(anon, dtype=np.uint8)
        pad = -whole.__array_interface__["data"][0] % huge
        data = whole[pad : pad + n]
        data[:] = np.frombuffer(self._mm, dtype=np.uint8, count=n, offset=self.data_offset)
        data.flags.writeable = False
        self._data = data
        page = mmap.PAGESIZE  # this mapping's pages of the data are not read any more (they stay in the page cache)
        start = (self.data_offset + page - 1) // page * page
        if hasattr(mmap, "MADV_DONTNEED") and start < self.file_size:
            self._mm.madvise(mmap.MADV_DONTNEED, start, self.file_size - start)
        return True

    def tensor(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise GGUFError(f"{self.path.name}: missing tensor {name!r}") from None

    def dequantize(self, name: str) -> np.ndarray:
        """float32 copy of a tensor in numpy shape (see engine/quants.py)."""
        from engine.quants import dequantize, dequantize_i2_s

        t = self.tensor(name)
        if t.type == I2_S:
            return dequantize_i2_s(self.raw(name), t.n_elements).reshape(t.shape)
        return dequantize(self.raw(name), t.type).reshape(t.shape)

    # --- metadata ------------------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.metadata:
            raise GGUFError(f"{self.path.name}: missing metadata key {key!r}")
        return self.metadata[key]

    @property
    def arch(self) -> str:
        return str(self.require("general.architecture"))

    def close(self) -> None:
        # numpy views may still reference the map (or the resident copy); let the GC unmap it when they die
        self._mm = self._data = None


class _Cursor:
    def __init__(self, buf: memoryview, size: int, name: str):
        self.buf, self.pos, self.size, self.name = buf, 0, size, name

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFError(f"{self.name}: truncated while reading {what} at byte {self.pos}")

    def scalar(self, vtype: GGUFValueType, what: str):
        fmt, n = _SCALAR[vtype]
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def u32(self, what: str) -> int:
        return self.scalar(GGUFValueType.UINT32, what)

    def u64(self, what: str) -> int:
        return self.scalar(GGUFValueType.UINT64, what)

    def string(self, what: str, max_len: int | None = None) -> str:
        n = self.u64(what + " length")
        if max_len is not None and n > max_len:
            raise GGUFError(f"{self.name}: {what} is {n} bytes long (limit {max_len})")
        self.need(n, what)
        view = self.buf[self.pos : self.pos + n]
        self.pos += n
        try:
            return str(view, "utf-8")  # decoded straight from the map: no intermediate copy
        except UnicodeDecodeError:
            raise GGUFError(f"{self.name}: {what} is not valid UTF-8") from None
        finally:
            view.release()

    def value_type(self, what: str) -> GGUFValueType:
        v = self.u32(what)
        try:
            return GGUFValueType(v)
        except ValueError:
            raise GGUFError(f"{self.name}: unknown metadata value type {v} for {what}") from None

    def value(self, vtype: GGUFValueType, key: str):
        if vtype == GGUFValueType.STRING:
            return self.string(f"value of {key!r}")
        if vtype == GGUFValueType.ARRAY:
            etype = self.value_type(f"element type of {key!r}")
            count = self.u64(f"array length of {key!r}")
            if etype == GGUFValueType.STRING:
                # each string needs at least its 8-byte length: reject lying counts before looping
                self.need(count * 8, f"array {key!r}")
                start = self.pos
                unpack = struct.Struct("<Q").unpack_from
                buf, pos, size = self.buf, self.pos, self.size
                for _ in range(count):
                    if pos + 8 > size:
                        raise GGUFError(f"{self.name}: truncated while reading array {key!r}")
                    (n,) = unpack(buf, pos)
                    pos += 8 + n
                    if pos > size:
                        raise GGUFError(f"{self.name}: truncated while reading array {key!r}")
                self.pos = pos
                return StringArray(self.buf, start, count, pos)
            if etype == GGUFValueType.ARRAY:
                raise GGUFError(f"{self.name}: nested arrays are not supported ({key!r})")
            _, n = _SCALAR[etype]
            self.need(count * n, f"array {key!r}")
            arr = np.frombuffer(self.buf, dtype=np.dtype(_NP[etype]).newbyteorder("<"), count=count, offset=self.pos)
            self.pos += count * n
            return arr
        return self.scalar(vtype, f"value of {key!r}")


# bitnet.cpp's llama.cpp fork numbers four types of its own: 36 I2_S, 37 I8_S, 38 TL1, 39 TL2 — and
# upstream ggml has reused 39 for MXFP4 (36–38 were retired IQ4_NL_4_x repackings never stored in
# GGUFs). So a type number says nothing alone: the file decides (_bitnet_types).
BITNET_TYPES = {36: "I2_S", 37: "I8_S", 38: "TL1", 39: "TL2"}
BITNET_ARCHS = ("bitnet", "bitnet-25", "bitnet-b1.58")
BITNET_FILE_TYPES = {38: "MOSTLY_TL1", 39: "MOSTLY_TL2", 40: "MOSTLY_I2_S"}  # the fork's llama_ftype numbers


def _bitnet_types(name: str, metadata: dict, infos: list, alignment: int, data_size: int) -> list:
    """Resolve bitnet.cpp's type numbers in (name, ne, type, offset) infos, or raise one line.

    Type 36 is I2_S when the file stores it as bitnet.cpp does: n/4 bytes of codes plus the 32
    bytes of the scale (ggml_nbytes), which the next tensor's offset (or the end of the data) must
    leave room for, and no tensor of an upstream-only type (MXFP4 and later, unknown to the fork)
    sits beside it. A type-36 tensor stored in K·N bytes (the fork's 1-byte type traits, as a
    table-driven writer sizes it) or in too little room is ambiguous and refused. I8_S, TL1 and
    TL2 are refused (no kernel here); 39 is TL2 in a file whose file_type is the fork's TL1/TL2 and
    upstream's MXFP4 otherwise."""
    from engine.quants import i2_s_nbytes

    i2s = [t for t in infos if t[2] == 36]
    file_type = metadata.get("general.file_type")
    fork_tl = isinstance(file_type, int) and file_type in (38, 39) and metadata.get("general.architecture") in BITNET_ARCHS
    other = [t for t in infos if type(t[2]) is int and t[2] != 36]  # bare numbers: bitnet.cpp's
    if other or (fork_tl and any(t[2] == 39 for t in infos)):
        t = (other or [t for t in infos if t[2] == 39])[0]
        raise GGUFError(f"{name}: tensor {t[0]!r} has bitnet.cpp's type {BITNET_TYPES[int(t[2])]} ({int(t[2])}), which the engine "
                        f"does not run (only I2_S)")  # fmt: skip
    if not i2s:
        return infos
    upstream_only = sorted({t[2].name for t in infos if type(t[2]) is not int and t[2] >= 39})  # enum members, ExtTypes
    if upstream_only:
        raise GGUFError(f"{name}: ambiguous file: type 36 (bitnet.cpp's I2_S) beside upstream-only type {upstream_only[0]}; "
                        f"refusing to guess which ggml numbered it")  # fmt: skip
    ends = sorted({off for _, _, _, off in infos} | {data_size})
    out = []
    for tname, ne, ttype, off in infos:
        if ttype == 36:
            n_el = 1
            for d in ne:
                n_el *= d
            room = next(e for e in ends if e > off) - off if off < data_size else 0
            need = i2_s_nbytes(n_el)
            padded = (need + alignment - 1) // alignment * alignment
            if room < need or (room != padded and room != need and off + room != data_size):
                how = "K·N bytes (I2_S's 1-byte type traits)" if room == n_el else f"{room} bytes"
                raise GGUFError(f"{name}: ambiguous file: tensor {tname!r} of type 36 is stored in {how}, not as bitnet.cpp's "
                                f"I2_S ({need} bytes); refusing to guess")  # fmt: skip
            ttype = I2_S
        out.append((tname, ne, ttype, off))
    return out


def _huge_pages_affordable(nbytes: int) -> bool:
    """make_resident's condition: Linux's transparent huge pages enabled ("always" or "madvise") and
    nbytes at most a quarter of MemAvailable (/proc/meminfo)."""
    try:
        if "[never]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text():
            return False
        avail = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return False
    return hasattr(mmap, "MADV_HUGEPAGE") and nbytes <= avail // 4


def open_gguf(path: str | os.PathLike) -> GGUFFile:
    """Parse header, metadata and tensor infos; map the file read-only. Raises GGUFError."""
    path = Path(path)
    name = path.name
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise GGUFError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise GGUFError(f"{path}: is a directory, not a GGUF file") from None
    except PermissionError:
        raise GGUFError(f"{path}: permission denied") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size < 24:
            raise GGUFError(f"{name}: file too short ({size} bytes) to be GGUF")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    buf = memoryview(mm)
    try:
        c = _Cursor(buf, size, name)
        magic = c.u32("magic")
        if magic != GGUF_MAGIC:
            raise GGUFError(f"{name}: bad magic {bytes(buf[:4])!r}, not a GGUF file")
        version = c.u32("version")
        if version not in (2, 3):
            raise GGUFError(f"{name}: unsupported GGUF version {version} (need 2 or 3)")
        n_tensors = c.u64("tensor count")
        n_kv = c.u64("metadata count")
        # every KV pair takes ≥ 8+4 bytes, every tensor info ≥ 8+4+8+4+8
        if n_kv * 12 > size or n_tensors * 32 > size:
            raise GGUFError(f"{name}: header claims {n_tensors} tensors / {n_kv} metadata keys, more than the file can hold")
        metadata: dict[str, Any] = {}
        vtypes: dict[str, GGUFValueType] = {}
        for i in range(n_kv):
            key = c.string(f"metadata key #{i}", max_len=MAX_NAME_LEN)
            vt = c.value_type(key)
            metadata[key] = c.value(vt, key)
            vtypes[key] = vt
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if isinstance(alignment, (bool, str, float, StringArray, np.ndarray)) or not isinstance(alignment, int):
            raise GGUFError(f"{name}: general.alignment has type {vtypes.get('general.alignment', '?')!s}, not an integer")
        if alignment <= 0 or alignment & (alignment - 1):
            raise GGUFError(f"{name}: general.alignment {alignment} is not a power of two")
        infos = []
        for i in range(n_tensors):
            tname = c.string(f"tensor name #{i}", max_len=MAX_NAME_LEN)
            n_dims = c.u32(f"dimension count of {tname!r}")
            if n_dims > MAX_DIMS:
                raise GGUFError(f"{name}: tensor {tname!r} has {n_dims} dimensions (max {MAX_DIMS})")
            ne = tuple(c.u64(f"dimensions of {tname!r}") for _ in range(n_dims))
            traw = c.u32(f"type of {tname!r}")
            try:
                ttype = ggml_type(traw)  # the gguf package's enum, or an upstream type it lacks (Q2_0)
            except ValueError:
                if traw not in BITNET_TYPES:
                    raise GGUFError(f"{name}: tensor {tname!r} has unknown ggml type {traw}") from None
                ttype = traw  # a bitnet.cpp type number: decided below from the file itself
            off = c.u64(f"offset of {tname!r}")
            infos.append((tname, ne, ttype, off))
        data_offset = (c.pos + alignment - 1) // alignment * alignment
        infos = _bitnet_types(name, metadata, infos, alignment, size - data_offset)
        tensors: dict[str, TensorInfo] = {}
        spans = []
        for tname, ne, ttype, off in infos:
            if tname in tensors:
                raise GGUFError(f"{name}: duplicate tensor name {tname!r}")
            if not ne or any(d <= 0 for d in ne) or any(d > size * 8 for d in ne):
                raise GGUFError(f"{name}: tensor {tname!r} has invalid dimensions {list(ne)}")
            n_el = 1
            for d in ne:
                n_el *= d
            if ttype == I2_S:
                if ne[0] % I2_S_GROUP:
                    raise GGUFError(f"{name}: I2_S tensor {tname!r} has rows of {ne[0]}, not a multiple of {I2_S_GROUP} "
                                    f"(bitnet.cpp computes wrong results for those)")  # fmt: skip
                block, bsize, nbytes = 1, 1, i2_s_nbytes(n_el)
            elif ttype not in QUANT_SIZES:
                raise GGUFError(f"{name}: tensor {tname!r} has unsupported ggml type {ttype.name}")
            else:
                block, bsize = QUANT_SIZES[ttype]
                nbytes = n_el // block * bsize
            if ne[0] % block:
                raise GGUFError(f"{name}: tensor {tname!r} row of {ne[0]} is not a multiple of {ttype.name}'s block {block}")
            if off % alignment:
                raise GGUFError(f"{name}: tensor {tname!r} offset {off} is not aligned to {alignment}")
            start = data_offset + off
            if start + nbytes > size:
                raise GGUFError(f"{name}: tensor {tname!r} data ({nbytes} bytes at {start}) runs past end of file ({size} bytes); truncated?")
            tensors[tname] = TensorInfo(tname, ne, ttype, start, nbytes)
            spans.append((start, start + nbytes, tname))
        spans.sort()
        for (s0, e0, n0), (s1, e1, n1) in zip(spans, spans[1:]):
            if s1 < e0:
                raise GGUFError(f"{name}: tensors {n0!r} and {n1!r} overlap")
    except GGUFError:
        metadata = infos = None  # drop numpy views of the map, then unmap
        try:
            buf.release()
            mm.close()
        except BufferError:  # a view is still referenced by the traceback; the GC unmaps later
            pass
        raise
    return GGUFFile(path, version, metadata, vtypes, tensors, alignment, data_offset, size, mm)


# --------------------------------------------------------------------------------------------
# ModelConfig: hyper-parameters read from metadata (keys as in llama.cpp src/llama-arch.cpp)
# --------------------------------------------------------------------------------------------

SUPPORTED_ARCHS = ("llama", "gemma", "gemma2", "gemma3", "qwen2", "qwen3", "qwen3moe", "phi3", "olmo2", "granite", "smollm3") + BITNET_ARCHS


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int  # key_length (n_embd_head_k)
    head_dim_v: int  # value_length
    n_vocab: int
    n_ctx_train: int
    rms_eps: float
    rope_base: float
    rope_base_swa: float  # rope base of sliding-window layers (gemma2/3)
    rope_dim: int  # n_rot
    rope_neox: bool  # gemma: rotate halves (NEOX); llama/bitnet: adjacent pairs (NORM)
    sliding_window: int  # 0 = none
    swa_layers: tuple[bool, ...]  # per layer: True if it uses the sliding window
    attn_scale: float  # scale applied to Q before QK^T
    attn_softcap: float  # 0 = none (gemma2)
    final_softcap: float  # 0 = none (gemma2, optional in gemma3)
    embd_scale: float  # gemma: sqrt(n_embd) on the input embeddings; granite: embedding_scale; 1 otherwise
    tied_output: bool  # no output.weight: token_embd doubles as the LM head
    # the llama-like families (engine/models/families.py); neutral values for the others
    residual_scale: float = 0.0  # granite: each block's output · residual_scale before the add (0 = none)
    logit_scale: float = 1.0  # granite: logits / logit_scale
    rope_layers: tuple[bool, ...] = ()  # per layer: False where the layer has no rope (smollm3); () = all rope
    rope_attn_factor: float = 1.0  # phi3 long-rope: cos and sin · rope.scaling.attn_factor
    n_ctx_orig: int = 0  # rope.scaling.original_context_length (phi3 picks short/long factors by it)
    n_expert: int = 0  # qwen3moe: experts per layer
    n_expert_used: int = 0  # ... of which the top-k run per token
    n_ff_exp: int = 0  # ... each with this FFN width


def _swa_pattern(n_layer: int, n_pattern: int) -> tuple[bool, ...]:
    # llama.cpp src/llama-hparams.cpp set_swa_pattern (dense_first = false):
    # layer il is sliding-window when il % n_pattern < n_pattern - 1
    return tuple(n_pattern == 0 or (il % n_pattern < n_pattern - 1) for il in range(n_layer))


def read_config(g: GGUFFile) -> ModelConfig:
    """Hyper-parameters from metadata. Raises GGUFError for missing or ill-typed values."""
    try:
        return _read_config(g)
    except (TypeError, ValueError, OverflowError) as e:
        if isinstance(e, GGUFError):
            raise
        raise GGUFError(f"{g.path.name}: bad hyper-parameter value ({e})") from None


def _read_config(g: GGUFFile) -> ModelConfig:
    arch = g.arch
    if not isinstance(arch, str):
        raise GGUFError(f"{g.path.name}: general.architecture is not a string")
    if arch not in SUPPORTED_ARCHS:
        raise GGUFError(f"{g.path.name}: unsupported architecture {arch!r} (supported: {', '.join(SUPPORTED_ARCHS)})")

    def key(k: str, default: Any = ...) -> Any:
        full = f"{arch}.{k}"
        if full in g.metadata:
            v = g.metadata[full]
            if isinstance(v, np.ndarray):  # per-layer arrays: we support uniform values only
                if v.size == 0 or not np.all(v == v.flat[0]):
                    raise GGUFError(f"{g.path.name}: per-layer {full!r} values are not supported")
                v = v.flat[0].item()
            return v
        if default is ...:
            raise GGUFError(f"{g.path.name}: missing metadata key {full!r}")
        return default

    n_layer = int(key("block_count"))
    n_embd = int(key("embedding_length"))
    n_head = int(key("attention.head_count"))
    n_head_kv = int(key("attention.head_count_kv", n_head))
    if n_layer <= 0 or n_embd <= 0 or n_head <= 0 or n_head_kv <= 0 or n_head % n_head_kv:
        raise GGUFError(f"{g.path.name}: inconsistent hyper-parameters (layers {n_layer}, embd {n_embd}, heads {n_head}/{n_head_kv})")
    head_dim = int(key("attention.key_length", n_embd // n_head))
    head_dim_v = int(key("attention.value_length", head_dim))
    emb = g.tensor("token_embd.weight")
    # a header can lie; the tensors cannot without failing the size checks: cross-check them
    if not all(f"blk.{il}.attn_output.weight" in g.tensors for il in (0, n_layer - 1)) or f"blk.{n_layer}.attn_output.weight" in g.tensors:
        raise GGUFError(f"{g.path.name}: block_count {n_layer} does not match the blk.N tensors in the file")
    if emb.ne[0] != n_embd:
        raise GGUFError(f"{g.path.name}: embedding_length {n_embd} but token_embd.weight rows have {emb.ne[0]}")
    for t, rows in (("attn_q", n_head * head_dim), ("attn_k", n_head_kv * head_dim), ("attn_v", n_head_kv * head_dim_v)):
        ti = g.tensors.get(f"blk.0.{t}.weight")
        if ti is not None and (len(ti.ne) != 2 or ti.ne != (n_embd, rows)):
            raise GGUFError(f"{g.path.name}: blk.0.{t}.weight has shape {list(ti.ne)}, expected [{n_embd}, {rows}] from the head counts")
    n_vocab = int(key("vocab_size", emb.ne[1]))
    rope_base = float(key("rope.freq_base", 10000.0))
    gemma = arch.startswith("gemma")

    sliding_window, swa = 0, (False,) * n_layer
    rope_base_swa = rope_base
    attn_softcap = final_softcap = 0.0
    attn_scale = 1.0 / float(np.sqrt(head_dim))
    if arch == "gemma2":
        # llama.cpp src/models/gemma2.cpp: SWA on every other layer, window 4096 by default,
        # attention and final logit soft-capping (defaults 50 / 30 in llama-hparams.h)
        sliding_window = int(key("attention.sliding_window", 4096))
        swa = _swa_pattern(n_layer, int(key("attention.sliding_window_pattern", 2)))
        rope_base_swa = float(key("rope.freq_base_swa", rope_base))
        attn_softcap = float(key("attn_logit_softcapping", 50.0))
        final_softcap = float(key("final_logit_softcapping", 30.0))
    elif arch == "gemma3":
        # llama.cpp src/models/gemma3.cpp: 5 local layers to 1 global; local rope base defaults to
        # 10000 (rope_freq_base_train_swa in llama-hparams.h), global uses rope.freq_base
        sliding_window = int(key("attention.sliding_window", 0))
        if sliding_window > 0:
            swa = _swa_pattern(n_layer, int(key("attention.sliding_window_pattern", 6)))
            rope_base_swa = float(key("rope.freq_base_swa", 10000.0))
        final_softcap = float(key("final_logit_softcapping", 0.0))
    granite = arch == "granite"
    if granite and key("attention.scale", 0.0):
        # src/models/granite.cpp: kq_scale = f_attention_scale when set (only granite reads these keys)
        attn_scale = float(key("attention.scale"))
    if (arch, n_layer) in (("gemma2", 46), ("gemma3", 62)):
        # 27B variants scale by n_embd/n_head instead of head_dim (gemma2.cpp / gemma3.cpp)
        attn_scale = 1.0 / float(np.sqrt(n_embd // n_head))

    return ModelConfig(
        arch=arch,
        n_layer=n_layer,
        n_embd=n_embd,
        n_ff=int(key("feed_forward_length")),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        head_dim_v=head_dim_v,
        n_vocab=n_vocab,
        n_ctx_train=int(key("context_length", 2048)),
        rms_eps=float(key("attention.layer_norm_rms_epsilon")),
        rope_base=rope_base,
        rope_base_swa=rope_base_swa,
        rope_dim=int(key("rope.dimension_count", head_dim)),
        # llama.cpp src/llama-model.cpp llama_model_rope_type: gemma* and bitnet rotate halves (NEOX)
        # qwen2/qwen3/qwen3moe/olmo2/phi3 are NEOX too; granite and smollm3 NORM, like llama; so do
        # the fork's bitnet-25 and bitnet-b1.58 rotate halves (its src/llama.cpp)
        rope_neox=gemma or arch in BITNET_ARCHS + ("qwen2", "qwen3", "qwen3moe", "phi3", "olmo2"),
        sliding_window=sliding_window,
        swa_layers=swa,
        attn_scale=attn_scale,
        attn_softcap=attn_softcap,
        final_softcap=final_softcap,
        embd_scale=float(np.sqrt(np.float32(n_embd))) if gemma else float((granite and key("embedding_scale", 0.0)) or 1.0),
        tied_output="output.weight" not in g.tensors,
        # granite.cpp: f_residual_scale (0 = none), 1/f_logit_scale on the logits (required there)
        residual_scale=float(key("residual_scale", 0.0)) if granite else 0.0,
        logit_scale=float(key("logit_scale")) if granite else 1.0,
        # smollm3.cpp: every n_no_rope_layer_step-th layer (4, set in code) has no rope
        rope_layers=tuple((il + 1) % 4 != 0 for il in range(n_layer)) if arch == "smollm3" else (),
        # llama-model.cpp load_hparams: rope.scaling.attn_factor, rope.scaling.original_context_length
        rope_attn_factor=float(key("rope.scaling.attn_factor", 1.0)),
        n_ctx_orig=int(key("rope.scaling.original_context_length", key("context_length", 2048))),
        n_expert=int(key("expert_count", 0)),
        n_expert_used=int(key("expert_used_count", 0)),
        n_ff_exp=int(key("expert_feed_forward_length", 0)),
    )
