"""Writing a tool's output atomically (tools/common.py `staged_output`), in process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from llm_router.tools.common import staged_output


def test_stages_of_killed_runs_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    """A `convert` killed partway left `.OUT.partial-<pid>` beside its output for good (found
    from outside); the next run into the same place removes those whose process is gone."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead = tmp_path / f".model-hf.partial-{gone.stdout.strip()}"
    (dead / "sub").mkdir(parents=True)
    (dead / "sub" / "weights.bin").write_bytes(b"x" * 100)
    alive = tmp_path / f".model-hf.partial-{os.getppid()}"  # a process that runs: kept
    alive.mkdir()
    other = tmp_path / ".other.partial-1234567"  # another output's stage: not ours to judge
    other.mkdir()
    with staged_output(tmp_path / "model-hf", force=False, folder=True) as stage:
        (stage / "config.json").write_text("{}")
    assert (tmp_path / "model-hf" / "config.json").is_file()
    assert not dead.exists()
    assert alive.is_dir() and other.is_dir()
