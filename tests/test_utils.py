"""Small shared helpers: atomic writes keep the umask's file mode."""

import os
import stat
import sys

import pytest

from diffusion_accel.utils import atomic_write_json, atomic_write_text


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_write_respects_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "new")
        atomic_write_json(tmp_path / "b.json", {"x": 1})
        (tmp_path / "c.txt").write_text("old")
        atomic_write_text(tmp_path / "c.txt", "replaced")  # replacing a file: still the umask's mode
    finally:
        os.umask(old)
    for name in ("a.txt", "b.json", "c.txt"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == mode, name
    assert (tmp_path / "c.txt").read_text() == "replaced"
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.json", "c.txt"]  # no temporary file left
