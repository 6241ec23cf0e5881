"""Download helpers: checksums, atomic writes, extraction that cannot escape its folder."""
from __future__ import annotations

import io
import tarfile
import zipfile

import pytest

from lab.download import DataError, download, extract, file_digest, verify


def _tar(path, members: dict[str, bytes], symlink: tuple[str, str] | None = None):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink[0])
            info.type = tarfile.SYMTYPE
            info.linkname = symlink[1]
            tf.addfile(info)


def test_extract_tar_and_zip(tmp_path):
    _tar(tmp_path / "a.tar.gz", {"folder/x.txt": b"hello"})
    extract(tmp_path / "a.tar.gz", tmp_path / "out")
    assert (tmp_path / "out/folder/x.txt").read_bytes() == b"hello"
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as zf:
        zf.writestr("z/y.txt", "zip")
    extract(tmp_path / "b.zip", tmp_path / "out2")
    assert (tmp_path / "out2/z/y.txt").read_text() == "zip"


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/evil_absolute.txt", "a/../../evil.txt"])
def test_extract_refuses_path_traversal(tmp_path, name):
    _tar(tmp_path / "bad.tar.gz", {name: b"x"})
    with pytest.raises(DataError, match="outside"):
        extract(tmp_path / "bad.tar.gz", tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_extract_refuses_symlink_out_of_folder(tmp_path):
    _tar(tmp_path / "link.tar.gz", {"ok.txt": b"x"}, symlink=("data/link", "../../etc/passwd"))
    with pytest.raises(DataError, match="outside"):
        extract(tmp_path / "link.tar.gz", tmp_path / "out")


def test_zip_traversal_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        zf.writestr("../evil.txt", "x")
    with pytest.raises(DataError, match="outside"):
        extract(tmp_path / "bad.zip", tmp_path / "out")


def test_verify_and_corrupt_archive(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"payload")
    verify(path, file_digest(path))
    with pytest.raises(DataError, match="corrupt"):
        verify(path, "0" * 32)


def test_download_from_file_url_verifies_and_is_atomic(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(b"abc" * 1000)
    good = file_digest(source)
    dest = download(source.as_uri(), tmp_path / "dl" / "copy.bin", good)
    assert dest.read_bytes() == source.read_bytes()
    with pytest.raises(DataError, match="corrupt"):
        download(source.as_uri(), tmp_path / "dl" / "other.bin", "0" * 32)
    assert not (tmp_path / "dl" / "other.bin").exists() and not (tmp_path / "dl" / "other.bin.part").exists()


def test_download_failure_is_one_line(tmp_path):
    with pytest.raises(DataError) as error:
        download("http://127.0.0.1:9/nothing.tar.gz", tmp_path / "x.tar.gz", timeout=2)
    message = str(error.value)
    assert "\n" not in message and "put it at" in message and str(tmp_path / "x.tar.gz") in message


@pytest.mark.parametrize("kind, name, target", [
    (tarfile.LNKTYPE, "data/b/hard", "../outside.txt"),  # a hard link names a member from the archive's root
    (tarfile.LNKTYPE, "data/hard", "/etc/passwd"),
    (tarfile.SYMTYPE, "data/soft", "/etc/passwd"),
])
def test_extract_refuses_links_out_of_the_folder_with_one_line(tmp_path, kind, name, target):
    """The hard link used to pass the check (resolved against its own folder) and then fail inside tarfile's
    filter with an uncaught LinkOutsideDestinationError."""
    with tarfile.open(tmp_path / "links.tar.gz", "w:gz") as tf:
        info = tarfile.TarInfo("data/b/ok.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
        link = tarfile.TarInfo(name)
        link.type, link.linkname = kind, target
        tf.addfile(link)
    with pytest.raises(DataError, match=f"^link target '{target}' would be written outside .*; refusing to extract$"):
        extract(tmp_path / "links.tar.gz", tmp_path / "out")
    assert not (tmp_path / "out" / "data").exists()
