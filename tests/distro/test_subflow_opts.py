"""The per-subflow option checks of tests/host/test_subflow_opts.py, run on the kernel
ops teams run: Debian's stock 6.12, booted by `make test-distro`:

    bpfkit vm run --kernel /boot/vmlinuz-6.12.*-amd64 -- .venv/bin/pytest -m distro tests/distro/test_subflow_opts.py

Same test functions and fixtures, imported, so both tiers check exactly the
same things; only the tier marker differs.
"""

import pytest
from pyroute2 import config as pyroute2_config

# pyroute2 talks to a helper process for each namespace it enters and gives up
# after 2 s: far too short for a TCG-emulated guest.
pyroute2_config.default_communicate_timeout = 120
pyroute2_config.default_create_socket_timeout = 120

from tests.host.test_subflow_opts import *  # noqa: F401,F403  (test functions and the `cg` fixture)

pytestmark = pytest.mark.distro  # replaces the host marker the import brought along
