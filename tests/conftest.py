"""Suite-wide settings: one torch thread per pytest-xdist worker (2 workers on 2 cores would otherwise
oversubscribe the CPU with 4 threads and slow small ops down many-fold)."""

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
