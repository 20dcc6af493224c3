"""The compiled scans' threads: numba's, matched to torch's."""
from __future__ import annotations

import numba
import torch


def match_torch_threads() -> int:
    """Set numba's threads to torch's (at most numba's pool) and return how many that is, leaving torch's
    count as it was. When numba's OpenMP threading layer starts, it sets the OpenMP thread count to its
    pool size, and the call lands in the OpenMP runtime torch reads (measured: a one-thread scan, and
    every torch operation after it, then ran on two), so the first call restores torch's count.

    numba's parallel loops are not fork-safe under GNU OpenMP: a process that runs the compiled scans
    starts its workers with multiprocessing's "spawn" or "forkserver" (Ray's workers are new processes)."""
    torch_threads = torch.get_num_threads()
    threads = min(torch_threads, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(threads)
    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
    return threads
