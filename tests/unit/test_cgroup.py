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


def test_created_path_makes_missing_parents_and_refuses_what_cannot_be_made(tmp_path, monkeypatch):
    monkeypatch.setattr(cgroup, "cgroup2_root", lambda: tmp_path)
    with cgroup.created_path("a.slice/app") as made:
        assert made == tmp_path / "a.slice" / "app" and made.is_dir()
    assert (tmp_path / "a.slice" / "app").is_dir()  # kept: the block succeeded
    with cgroup.created_path("a.slice/app") as made:  # already there: fine
        assert made == tmp_path / "a.slice" / "app"
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="cannot create"):
        with cgroup.created_path("file/app"):
            pass
    with pytest.raises(UsageError, match="not below"):
        with cgroup.created_path("../outside"):
            pass


def test_created_path_removes_what_it_made_when_the_block_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(cgroup, "cgroup2_root", lambda: tmp_path)
    (tmp_path / "kept.slice").mkdir()
    with pytest.raises(UsageError, match="attach failed"):
        with cgroup.created_path("kept.slice/new.slice/app"):
            assert (tmp_path / "kept.slice" / "new.slice" / "app").is_dir()
            raise UsageError("attach failed")
    assert not (tmp_path / "kept.slice" / "new.slice").exists()  # made by it: gone
    assert (tmp_path / "kept.slice").is_dir()  # there before: untouched
