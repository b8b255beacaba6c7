"""The per-subflow option checks of tests/host/test_subflow_opts.py, run inside
the bpfkit VM kernel (Linux 6.12):

    bpfkit vm run -- .venv/bin/pytest -m vm tests/vm/test_subflow_opts_vm.py

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

pytestmark = pytest.mark.vm  # replaces the host marker the import brought along
