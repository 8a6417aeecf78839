"""A zero-code run (`symwatch run`, no change to the script) publishes its optimizer's settings
too (issue #16, point 5): the agent finds the optimizer that stepped and reads its param
groups; the header's `lr 0.01 · wd 0.01` comes from STATS `optimizer`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from symwatch.core import protocol
from symwatch.core.processes import free_port
from symwatch.state.optimizer import settings_text

TRAIN = str(Path(__file__).parents[1] / "fixtures" / "thirdparty_train.py")
DEADLINE_S = 100  # a cold torch import on a loaded machine can take a while


def test_a_zero_code_run_publishes_its_optimizers_settings(collector, tmp_path):
    stop = tmp_path / "stop"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sub = collector(endpoint)  # connect before the run binds: ZeroMQ reconnects until it does
    proc = subprocess.Popen([sys.executable, "-m", "symwatch", "run", "--endpoint", endpoint,
                             "--every", "1", "--budget", "1", "--", sys.executable, TRAIN,
                             "--steps", "10", "--sleep", "0.02", "--until", str(stop)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stats = sub.wait_for(lambda m: m.kind == protocol.STATS and "optimizer" in m.payload,
                             timeout=DEADLINE_S)
        stop.touch()
        proc.communicate(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    (group,) = stats.payload["optimizer"]
    # the fixture's AdamW(lr=1e-2), torch's default weight decay and betas
    assert group == {"optimizer": 0, "group": 0, "type": "AdamW", "lr": 0.01,
                     "weight_decay": 0.01, "beta1": 0.9, "beta2": 0.999}
    assert settings_text(stats.payload["optimizer"]) == "lr 0.01 · wd 0.01"
    assert proc.returncode == 3
