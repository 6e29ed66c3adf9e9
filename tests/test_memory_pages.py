"""Where the harness's large arrays live: numpy's arrays on ordinary pages (process.small_pages),
the reference child's rows written into files the parent made and allocated (isolated.prepare_arrays
/ array_file), each row written once (base.greedy_compare_pass's alloc), and the engine's huge-page
copy of the weights only where the caller asks (Engine(resident=...))."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from crossval.backends.base import greedy_compare_pass
from crossval.backends.isolated import array_file, map_arrays, prepare_arrays

HUGEPAGE_STATE = "import numpy as np; core = getattr(np, '_core', None) or np.core; print(core.multiarray._set_madvise_hugepage(False))"


@pytest.mark.skipif(sys.platform != "linux", reason="numpy asks for huge pages on Linux only")
@pytest.mark.parametrize("call, expect", [("", "True"), ("from crossval.process import small_pages; small_pages(); ", "False")])
def test_small_pages_turns_numpys_hugepage_advice_off(call, expect):
    """numpy's setter returns the state it replaces: on by default (Linux), off after small_pages."""
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    r = subprocess.run([sys.executable, "-c", call + HUGEPAGE_STATE], capture_output=True, text=True, env=env, check=True)
    assert r.stdout.strip() == expect


def test_child_writes_into_the_files_the_parent_prepared(tmp_path):
    """prepare_arrays makes each file with its header and allocates its data (blocks on disk / in
    shared memory) in a thread; the child's array_file maps that file as it is (not truncated: the
    blocks stay), and the parent maps what the child wrote."""
    prefix = str(tmp_path / "pass")
    prepare_arrays(prefix, {"prompt": (3, 1024), "steps": (2, 1024)}).join()
    path = f"{prefix}.prompt.npy"
    allocated = os.stat(path).st_blocks * 512
    assert allocated >= 3 * 1024 * 4
    rows = np.arange(3 * 1024, dtype=np.float32).reshape(3, 1024)
    out = array_file(prefix, "prompt")((3, 1024), np.float32)
    assert os.stat(path).st_blocks * 512 == allocated  # the prepared file, not a new one
    out[:] = rows
    out.flush()
    del out
    other = array_file(prefix, "steps")((4, 1024), np.float32)  # another shape than prepared: a new file of that shape
    assert other.shape == (4, 1024)
    del other
    got = map_arrays(prefix, ["prompt", "steps"])
    np.testing.assert_array_equal(got["prompt"], rows)
    assert got["steps"].shape == (4, 1024) and not os.path.exists(path)


def test_prepare_arrays_tolerates_files_already_gone(tmp_path):
    prefix = str(tmp_path / "pass")
    t = prepare_arrays(prefix, {"prompt": (2, 8)})
    t.join()
    os.unlink(f"{prefix}.prompt.npy")
    prepare_arrays(prefix, {}).join()  # nothing to make


class _Steps:
    """reset / prefill_all / decode_step / truncate over a fixed table: row = position · 10 + token."""

    V = 6

    def reset(self):
        self.n = 0

    def prefill_all(self, ids):
        rows = np.array([[10 * (self.n + i) + t] * self.V for i, t in enumerate(ids)], dtype=np.float32)
        self.n += len(ids)
        return rows

    def decode_step(self, tok):
        row = np.full(self.V, 10 * self.n + tok, dtype=np.float32)
        self.n += 1
        return row

    def truncate(self, n):
        self.n = n


def test_greedy_compare_pass_writes_each_row_into_the_allocated_arrays():
    made = {}

    def alloc(name, shape):
        made[name] = np.full(shape, np.nan, dtype=np.float32)
        return made[name]

    choose = lambda row: int(row[0]) % 5  # noqa: E731
    cp = greedy_compare_pass(_Steps(), [1, 2], 3, [4], choose, alloc)
    plain = greedy_compare_pass(_Steps(), [1, 2], 3, [4], choose)
    assert cp.step_logits is made["steps"] and cp.forced_logits is made["forced"]
    np.testing.assert_array_equal(cp.forced_logits, [[24.0] * 6])
    np.testing.assert_array_equal(cp.step_logits[:, 0], [12.0, 22.0, 32.0])  # prompt's last row, then one per step
    assert cp.tokens == plain.tokens == [2, 2, 2]
    np.testing.assert_array_equal(cp.step_logits, plain.step_logits)
    np.testing.assert_array_equal(cp.forced_logits, plain.forced_logits)
    assert greedy_compare_pass(_Steps(), [1], 0, None, choose, alloc).step_logits is None


def test_engine_resident_is_the_callers_choice_and_changes_no_logit(tiny_model):
    from engine import kernels
    from engine.generate import Engine

    if not kernels.available():
        pytest.skip(kernels.load_error())
    path = tiny_model("gemma3")
    ids = [2, 5, 9, 11, 3]
    mapped = Engine(path, n_ctx=32, kv_type="f16", mode="faithful", resident=False)
    assert mapped.gguf._data is None
    resident = Engine(path, n_ctx=32, kv_type="f16", mode="faithful")
    if resident.gguf._data is None:
        pytest.skip("no transparent huge pages here (or too little memory): nothing is copied")
    np.testing.assert_array_equal(resident.logits(ids), mapped.logits(ids))
