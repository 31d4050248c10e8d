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


def test_a_temp_of_a_reused_pid_is_stale_but_a_live_writer_s_is_not(tmp_path):
    """Pids are reused (in a container each run may be pid 1): a temp whose pid is alive is
    still stale when that process started after the temp was last written, and this
    process's own staged temps are never stale."""
    import os
    import subprocess
    import time

    def temp(pid, age=None):
        p = tmp_path / f".x.png.{pid}.abc_12{files.TMP_SUFFIX}"
        p.write_bytes(b"half")
        if age is not None:
            os.utime(p, (time.time() - age,) * 2)
        return p

    later = subprocess.Popen(["sleep", "30"])
    try:
        time.sleep(0.1)
        reused = temp(later.pid, age=600)  # written long before that process started
        live = tmp_path / f".y.png.{later.pid}.abc_12{files.TMP_SUFFIX}"
        live.write_bytes(b"being written")  # written after it started: its own
        mine_old = temp(os.getpid(), age=3600 * 24 * 365)  # before this process started
        mine = files.stage(tmp_path / "z.png")  # this process's, at work
        os.utime(mine, (time.time() - 3600 * 24 * 365,) * 2)
        assert files.is_stale(reused, later.pid) and files.is_stale(mine_old, os.getpid())
        assert not files.is_stale(live, later.pid) and not files.is_stale(mine, os.getpid())
        removed = files.remove_stale_temps(tmp_path)
        assert sorted(removed) == sorted([reused, mine_old])
        assert live.exists() and mine.exists()
    finally:
        later.kill()
        later.wait()
