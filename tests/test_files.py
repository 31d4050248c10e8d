"""runtime.files.atomic_write: whole files only, and the umask's mode, not mkstemp's 0600."""

import stat

import pytest

from p2p.runtime.errors import P2PError
from p2p.runtime import files
from p2p.runtime.files import atomic_write


def test_atomic_write_respects_umask_and_replaces_whole(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write(target, lambda tmp: tmp.write_text("one"))
    atomic_write(target, lambda tmp: tmp.write_text("two"))
    assert target.read_text() == "two"
    # What open() would have made: readable by others under the usual umask 022.
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~files._UMASK
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]  # no temp left


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def boom(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(P2PError, match="out.txt: cannot write: No space left on device"):
        atomic_write(target, boom)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
