"""The child-process transport (crossval/backends/isolated.py ChildProcess): reading is linear in
the reply's size, and binary frames after a reply line arrive intact."""

from __future__ import annotations

import os
import sys
import time

from crossval.backends.isolated import ChildProcess

LINE = 160_000_000  # a 650 × 49,152 float32 logits reply in base64 is about this long


def test_a_160_mb_reply_line_is_read_in_linear_time():
    # the child writes one 160 MB line in 1 MiB pieces, then a short line
    code = ("import sys; o = sys.stdout.buffer; piece = b'x' * (1 << 20)\n"
            f"n = {LINE}\n"
            "while n: k = min(n, len(piece)); o.write(piece[:k]); n -= k\n"
            "o.write(b'\\nnext\\n'); o.flush()")  # fmt: skip
    c = ChildProcess()
    c._start([sys.executable, "-c", code], dict(os.environ), 120)
    try:
        deadline = time.monotonic() + 120
        line = c._readline(deadline, "test")
        assert len(line) == LINE and line[:1] == b"x" and line[-1:] == b"x"
        # every byte read was searched for the newline at most once (the old reader re-searched the
        # whole buffer after each 64 KiB read: ~n²/128 KiB ≈ 10¹¹ bytes here)
        st = c.reader_stats
        assert st["bytes_scanned"] <= st["bytes_read"], st
        assert st["reads"] >= 2, st  # the line really arrived in pieces
        assert c._readline(deadline, "test") == b"next"
    finally:
        c._shutdown()
