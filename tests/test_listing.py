"""One extension rule and one pairing rule for every command (runtime/listing.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2p.runtime.errors import DataError
from p2p.runtime.listing import list_images, pair_by_name
from p2p.runtime.pipeline import scan


def touch(root: Path, *names: str) -> None:
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(b"x")


def test_the_extension_rule_is_the_formats_pillow_decodes(tmp_path):
    touch(tmp_path, "a.png", "b.JPG", "c.jpeg", "d.webp", "e.gif", "f.TIFF", "g.bmp",
          "notes.txt", "model.h5", "clip.mpg", "doc.pdf", "page.eps", ".hidden.png",
          ".gallery/x.jpg", "sub/h.png")
    want = ["a.png", "b.JPG", "c.jpeg", "d.webp", "e.gif", "f.TIFF", "g.bmp", "sub/h.png"]
    assert [p.as_posix() for p in list_images(tmp_path)] == want
    assert [p.as_posix() for p in list_images(tmp_path, recursive=False)] == want[:-1]
    # p2p-translate's scan (natural order, --glob, excluded output folder) uses the same rule.
    assert sorted(p.as_posix() for p in scan(tmp_path, None, None)) == sorted(want)


def test_pairing_by_path_then_by_stem(tmp_path):
    a = [Path("1.png"), Path("2.png"), Path("x/3.png"), Path("4.png"), Path("5.png")]
    b = [Path("1.png"), Path("2.jpg"), Path("x/3.tif"), Path("4.jpg"), Path("4.webp"),
         Path("6.png")]
    m = pair_by_name(a, b)
    assert m.pairs == [(Path("1.png"), Path("1.png")), (Path("2.png"), Path("2.jpg")),
                       (Path("x/3.png"), Path("x/3.tif"))]
    assert m.ambiguous == [(Path("4.png"), [Path("4.jpg"), Path("4.webp")])]
    assert m.only_a == [Path("5.png")] and m.only_b == [Path("6.png")]
    with pytest.raises(DataError, match="several targets match 4.png"):
        m.require_complete(Path("p"), Path("t"), "prediction", "target")
    m = pair_by_name([Path("a.png"), Path("a.jpg")], [Path("a.tif")])
    assert m.shared == [Path("a.tif")]
