"""egcfg_pl: BTP (beam search + testing + prioritized experience replay) for code LLMs on PyTorch Lightning."""

import os

# libgomp's default spin-wait made 2 torch threads 5-15x slower than 1 on a loaded 2-core box; with passive waits
# 2 threads are as fast as 1 or faster (benchmarks/README.md, "Threads"). OpenMP reads this once, when torch
# loads it, so it only takes effect when egcfg_pl is imported before torch (cli.py does); a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
