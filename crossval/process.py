"""Process set-up done before any work: the BLAS thread pool numpy uses, limited through
threadpoolctl (which acts on the loaded library at run time, unlike OPENBLAS_NUM_THREADS, which
is read only when numpy is first imported), and what was actually applied, for the receipts."""

from __future__ import annotations

_LIMITS = None  # the threadpool_limits object kept alive for the whole process


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
