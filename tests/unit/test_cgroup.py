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


def test_create_path_makes_missing_parents_and_refuses_what_cannot_be_made(tmp_path, monkeypatch):
    monkeypatch.setattr(cgroup, "cgroup2_root", lambda: tmp_path)
    assert cgroup.create_path("a.slice/app") == tmp_path / "a.slice" / "app"
    assert (tmp_path / "a.slice" / "app").is_dir()
    assert cgroup.create_path("a.slice/app") == tmp_path / "a.slice" / "app"  # already there: fine
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="cannot create"):
        cgroup.create_path("file/app")
    with pytest.raises(UsageError, match="not below"):
        cgroup.create_path("../outside")
