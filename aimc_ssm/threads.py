"""The compiled scans' threads: numba's, matched to torch's."""
from __future__ import annotations

import numba
import torch


def numba_threads() -> int:
    """Set numba's threads to torch's (at most numba's pool) and return how many that is, leaving torch's
    count as it was: launching numba's OpenMP threading layer beside torch's OpenMP runtime can reset the
    count torch reads to numba's pool size (measured: once aihwkit's OpenMP was loaded, a one-thread scan,
    and every torch operation after it, ran on two)."""
    torch_threads = torch.get_num_threads()
    threads = max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
    return threads
