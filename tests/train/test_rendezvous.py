"""A lone training process under DeepSpeed needs a world of one: its rendezvous must not depend on a
free TCP port (one picked free and released was taken by a Ray cluster's process in between:
``DistNetworkError ... EADDRINUSE``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Every port this process asks the OS for comes back as the one another process holds: the worst case
# of "picked free, released, taken by someone else before torch binds it".
SCRIPT = textwrap.dedent("""
    import socket, sys
    from steve1.params import TrainParams
    from steve1.train.accelerator import build_accelerator

    held = int(sys.argv[1])
    class Taken(socket.socket):
        def getsockname(self):
            return ("127.0.0.1", held)
    socket.socket = Taken
    acc = build_accelerator(TrainParams(deepspeed="zero2"))
    import torch.distributed as dist
    print("world", acc.num_processes, dist.get_world_size())
""")


def test_a_lone_deepspeed_process_needs_no_free_port(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import socket, time; s = socket.socket(); "
                              "s.bind(('127.0.0.1', 0)); s.listen(); print(s.getsockname()[1], flush=True); "
                              "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        port = int(other.stdout.readline())          # held by another process, as a Ray raylet would hold it
        env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
        for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)
        proc = subprocess.run([sys.executable, "-c", SCRIPT, str(port)], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
    finally:
        other.kill()
        other.communicate()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("world 1 1"), proc.stdout
