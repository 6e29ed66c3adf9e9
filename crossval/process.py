"""Process set-up done before any work: the BLAS thread pool numpy uses, limited through
threadpoolctl (which acts on the loaded library at run time, unlike OPENBLAS_NUM_THREADS, which
is read only when numpy is first imported), and what was actually applied, for the receipts; and
numpy's large arrays kept on ordinary pages (small_pages)."""

from __future__ import annotations

_LIMITS = None  # the threadpool_limits object kept alive for the whole process


def small_pages() -> None:
    """Stop numpy asking for transparent huge pages (madvise MADV_HUGEPAGE) on the arrays it
    allocates (≥ 4 MiB): the harness's large arrays (a long prompt's logits: 611 × 262,144 float32
    is 641 MB) are written once and freed. A huge page needs 2 MiB of contiguous free memory, and on
    a virtual machine that hands free memory back to its host (free page reporting) contiguous free
    memory is exactly what was handed back, so every huge page is faulted in from the host again;
    4 KiB pages come first from the fragmented free memory the host still backs. Measured on the
    2-core VM we develop on: first touch 10 s/GiB with huge pages, 0.4 s/GiB with 4 KiB pages while
    the free fragments last (then 11 s/GiB too). The same as NUMPY_MADVISE_HUGEPAGE=0 (read at numpy's import; set for the
    children we start), for a numpy already imported."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    setter = getattr(core.multiarray, "_set_madvise_hugepage", None)
    if setter is not None:
        setter(False)


def limit_blas(threads: int) -> int | None:
    """Limit every BLAS pool in this process to `threads`; return the count now in effect."""
    global _LIMITS
    from threadpoolctl import threadpool_limits

    import numpy  # noqa: F401 — load numpy's BLAS first: threadpoolctl limits only the libraries already loaded

    _LIMITS = threadpool_limits(limits=max(1, int(threads)), user_api="blas")
    return blas_threads()


def blas_threads() -> int | None:
    """The thread count the loaded BLAS libraries report now (the largest if several; None when
    numpy's BLAS exposes none)."""
    from threadpoolctl import threadpool_info

    import numpy  # noqa: F401 — load numpy's BLAS so it is reported

    counts = [i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"]
    return max(counts) if counts else None
