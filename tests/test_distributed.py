"""Two-process DDP on CPU (gloo), launched the way users launch it: both ranks end with the
same weights, and they are trained weights."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("ddp_worker.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("methods", ["finetune", "lora"])
def test_two_process_ddp_ends_with_identical_weights(tmp_path, methods):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(WORKER), str(tmp_path), methods]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and ranks[0]
    assert all(torch.equal(ranks[0][n], ranks[1][n]) for n in ranks[0])
    with safe_open(str(tmp_path / "rank0.safetensors"), "pt") as handle:
        assert handle.metadata()["steps"] == "12"  # 16 examples, 2 per process: 4 steps an epoch, 3 epochs
    initial = load_file(str(tmp_path / "initial.safetensors"))
    assert any(not torch.equal(initial[n], ranks[0][n]) for n in ranks[0])
