"""Runs a throwaway test file in a separate pytest process, the way another
project using bpfkit's pytest plugin would (the plugin comes from the pytest11
entry point, not from this repo's conftest)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


def run_inner(tmp_path: Path, source: str, *, require_all: bool = False, timeout: float = 600):
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(textwrap.dedent(source))
    env = {k: v for k, v in os.environ.items() if k != "BPFKIT_REQUIRE_ALL"}
    if require_all:
        env["BPFKIT_REQUIRE_ALL"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-q", str(test_file)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
