import pytest

from bpfkit import cgroup
from bpfkit.errors import UsageError

pytestmark = pytest.mark.unit


def test_missing_cgroup_is_a_usage_error():
    with pytest.raises(UsageError, match="no such directory"):
        cgroup.resolve("/sys/fs/cgroup/definitely-not-here-bpfkit")


def test_relative_paths_resolve_under_the_v2_root():
    assert cgroup.resolve(".") == cgroup.cgroup2_root()


def test_non_cgroup2_directory_is_refused(tmp_path):
    # On hybrid hosts the v1 controllers live under /sys/fs/cgroup too; what
    # matters is the filesystem of the directory, whatever its path.
    with pytest.raises(UsageError, match="not a cgroup v2 directory"):
        cgroup.resolve(tmp_path)
