"""The wheel's build step beyond pyproject.toml (setuptools has no declarative hook for it).

A production host runs `bpfkit mptcpize` / `bpfkit subflow` from an installed wheel, without
clang, bpftool or kernel headers: the ops pillars' programs are compiled here, once, as CO-RE
objects (bpfkit/loader/build.py: SHIPPED_PROGRAMS, ship()) and go into the package with the
templates (bpfkit/paths.py: PACKAGE_DATA). An editable install keeps compiling from bpf/.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithObjects(build_py):
    def run(self):
        super().run()
        if self.dry_run or getattr(self, "editable_mode", False):
            return
        data = Path(self.build_lib) / "bpfkit" / "data"
        if data.exists():
            shutil.rmtree(data)
        shutil.copytree(HERE / "templates", data / "templates")
        # bpfkit's own builder, from this source tree (it needs only the standard library).
        env = dict(os.environ, PYTHONPATH=str(HERE))
        subprocess.run([sys.executable, "-m", "bpfkit.loader.build", "--ship", str(data / "bpf")],
                       check=True, cwd=HERE, env=env)


setup(cmdclass={"build_py": BuildPyWithObjects})
