"""The tolerant .off reader (tasks/off_format.py) on the kinds of files PyG's reader rejects."""
from __future__ import annotations

import pytest
import torch

from lab.download import DataError
from tasks.off_format import parse_off, read_off, write_off

SQUARE_PYRAMID = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0.5, 0.5, 1]])
PYRAMID_FACES = [[3, 2, 1, 0], [0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]]
# the quad base becomes the fan (3,2,1), (3,1,0)
PYRAMID_TRIANGLES = torch.tensor([[3, 2, 1], [3, 1, 0], [0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]]).t()


def test_comments_blank_lines_and_trailing_comments_are_ignored():
    text = """# exported by some modeller
OFF

# counts: vertices faces edges
3 1 0   # a trailing comment
0 0 0
1 0 0

0 1 0  # last vertex
3 0 1 2
"""
    vertices, faces = parse_off(text)
    assert torch.equal(vertices, torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]))
    assert torch.equal(faces, torch.tensor([[0], [1], [2]]))


@pytest.mark.parametrize("header", ["OFF\n5 5 0", "OFF5 5 0", "OFF 5 5 0"])
def test_counts_on_their_own_line_glued_or_after_a_space(header):
    body = "\n".join(" ".join(map(str, v)) for v in SQUARE_PYRAMID.tolist())
    body += "\n" + "\n".join(" ".join(map(str, [len(f), *f])) for f in PYRAMID_FACES)
    vertices, faces = parse_off(f"{header}\n{body}\n")
    assert torch.equal(vertices, SQUARE_PYRAMID)
    assert torch.equal(faces, PYRAMID_TRIANGLES)


def test_coff_colours_are_ignored_and_polygons_are_fan_triangulated():
    text = "COFF\n5 2 0\n" + "\n".join(f"{i} {i * i} 0 255 0 0 255" for i in range(5)) + "\n"
    text += "5 0 1 2 3 4 10 20 30\n3 4 3 2\n"
    vertices, faces = parse_off(text)
    assert vertices.shape == (5, 3) and vertices[3].tolist() == [3.0, 9.0, 0.0]
    assert faces.t().tolist() == [[0, 1, 2], [0, 2, 3], [0, 3, 4], [4, 3, 2]]


def test_write_then_read_round_trips_with_comments_and_glued_header(tmp_path):
    for glued in (False, True):
        path = tmp_path / f"pyramid_{glued}.off"
        write_off(path, SQUARE_PYRAMID, PYRAMID_FACES, comments=("made by a test",), glued_header=glued)
        text = path.read_text()
        assert ("# made by a test" in text) and ("\n\n" in text) and text.startswith("OFF5 5 0" if glued else "OFF\n")
        vertices, faces = read_off(path)
        assert torch.allclose(vertices, SQUARE_PYRAMID) and torch.equal(faces, PYRAMID_TRIANGLES)


@pytest.mark.parametrize("text, message", [
    ("PLY\n3 1 0\n", "not an OFF mesh"),
    ("4OFF\n1 0 0\n0 0 0 0\n", "unsupported OFF header '4OFF'"),
    ("OFF BINARY\n", "unsupported OFF header"),
    ("OFF\n3 1 0\n0 0 0\n1 0 0\n", "truncated"),
    ("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n", "outside 0..2"),
    ("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n2 0 1\n", "malformed"),
    ("OFF\n3 0 0\n0 0 0\n1 0 0\n0 1 0\n", "no faces"),
])
def test_unreadable_meshes_raise_one_line_naming_the_file(text, message):
    with pytest.raises(DataError, match=message) as error:
        parse_off(text, "chair_0001.off")
    assert str(error.value).startswith("chair_0001.off: ") and "\n" not in str(error.value)
