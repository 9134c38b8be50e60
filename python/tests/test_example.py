"""examples/offload_train.py, small: it trains through pins and its weights
and Adam moments equal plain PyTorch's bit for bit (it says OK, exits 0)."""

import os
import pathlib
import subprocess
import sys

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "offload_train.py"


def test_offload_train_matches_plain_pytorch(tmp_path):
    run = subprocess.run(
        [sys.executable, str(EXAMPLE), "--layers", "4", "--width", "255",
         "--steps", "3", "--batch", "8", "--nvme_path", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "bit for bit" in run.stdout and "OK:" in run.stdout
    assert run.stdout.count("\nstep ") == 3
    # The same steps' compute in plain memory, beside the paged step time.
    assert "plain PyTorch in memory:" in run.stdout and "s/step" in run.stdout
