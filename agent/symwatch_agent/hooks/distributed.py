"""What the agent derives from its place in a distributed job, from the environment only.

The rank, world size, local and node rank are read in agent.py (`_placement`). This module
adds the two things the distributed rules need (docs/distributed.md), without ever asking the
process group: the agent issues no collective, on its own schedule or otherwise.

- `job_id`: the run id every rank of one job shares, so that one viewer (through
  `symwatch relay`) folds every rank into one run (the header's `rank` tells them apart; `seq`
  counts per run, rank and restart). `$SYMWATCH_JOB_ID` when set, else derived from what all
  ranks of a launch see alike: `$TORCHELASTIC_RUN_ID` (torchrun's `--rdzv-id`; a fresh uuid
  with `--standalone`), `$SLURM_JOB_ID`, `$MASTER_ADDR`, `$MASTER_PORT`, `$WORLD_SIZE`. Two
  launches that agree on all of them (same rendezvous port, no rendezvous id, no SLURM) get
  the same id; set `SYMWATCH_JOB_ID` (or torchrun's `--rdzv-id`) to tell them apart.
- `node_leader`: the one process per node that polls device-wide NVML statistics (local
  rank 0; without a known local rank, rank 0 only: a launcher that sets no `$LOCAL_RANK` is
  taken to be single-node).
"""

from __future__ import annotations

import hashlib
import os
from typing import Mapping

ENV_JOB_ID = "SYMWATCH_JOB_ID"
_JOB_KEYS = ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE")


def job_id(environ: Mapping[str, str] | None = None) -> str | None:
    """12 hex digits, like a single process's random run id (see the module docstring); None
    when the environment says nothing the ranks share (then each rank is a run of its own)."""
    env = os.environ if environ is None else environ
    explicit = env.get(ENV_JOB_ID)
    if not explicit and not any(env.get(k) for k in _JOB_KEYS[:4]):
        return None
    key = explicit if explicit else "|".join(f"{k}={env.get(k, '')}" for k in _JOB_KEYS)
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:12]


def node_leader(rank: int, local_rank: int | None) -> bool:
    return local_rank == 0 if local_rank is not None else rank == 0
