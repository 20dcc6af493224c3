"""numba's threads, matched to torch's, leave torch's own count alone (aimc_ssm.threads.match_torch_threads)."""
import os
import subprocess
import sys

from conftest import ROOT

# a fresh process: numba launches its threading layer once, at the first compiled scan
SCAN_ON_ONE_THREAD = """
import numba
import torch
torch.set_num_threads(1)
from aimc_ssm.analog.devices import load_device
from aimc_ssm.analog.kernel import FusedS4D
from aimc_ssm.analog.numba_scan import fused_scan
from aimc_ssm.core.s4d import S4D
assert torch.get_num_threads() == 1
kernel = FusedS4D(S4D(2, 4), load_device("pcm"))
u = torch.randn(3, 5, 2)
fused_scan(kernel, kernel.crossbar_stack(u), u)
print(torch.get_num_threads(), numba.get_num_threads(), numba.threading_layer())
"""


def test_a_compiled_scan_leaves_torch_on_the_threads_it_was_given():
    # a pool larger than torch's one thread, on any machine, under the OpenMP layer that resets torch's count
    env = {**os.environ, "NUMBA_NUM_THREADS": "2", "NUMBA_THREADING_LAYER": "omp"}
    result = subprocess.run(
        [sys.executable, "-c", SCAN_ON_ONE_THREAD], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["1", "1", "omp"]
