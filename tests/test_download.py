"""Download helpers: checksums, atomic and resumable writes, extraction (whole or selected) that cannot
escape its folder."""
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


# -- resumable downloads over HTTP (a local server that honours Range and can cut a response short) ------
class _RangeServer:
    """Serves `payload` at /file; `cut_after` bytes into the next full response it drops the connection."""

    def __init__(self, payload: bytes, headers: dict[str, str] | None = None):
        import http.server
        import threading

        owner = self
        self.payload, self.extra_headers, self.cut_after, self.ranges = payload, headers or {}, None, []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the http.server API)
                start = 0
                requested = self.headers.get("Range")
                owner.ranges.append(requested)
                if requested:
                    start = int(requested.removeprefix("bytes=").rstrip("-"))
                    if start >= len(owner.payload):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(owner.payload) - 1}/{len(owner.payload)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(owner.payload) - start))
                for key, value in owner.extra_headers.items():
                    self.send_header(key, value)
                self.end_headers()
                body = owner.payload[start:]
                if owner.cut_after is not None:
                    body, owner.cut_after = body[:owner.cut_after], None
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/file"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def file_digest_of(payload: bytes) -> str:
    import hashlib

    return hashlib.md5(payload).hexdigest()


@pytest.fixture
def serve():
    servers = []

    def start(payload, headers=None):
        servers.append(_RangeServer(payload, headers))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_broken_download_resumes_with_a_range_request(tmp_path, serve, capsys):
    payload = bytes(range(256)) * 4000  # ~1 MB
    server = serve(payload)
    server.cut_after = 300_000
    dest = tmp_path / "big.bin"
    with pytest.raises(DataError, match="run again to resume") as error:
        download(server.url, dest, file_digest_of(payload), timeout=5)
    assert "\n" not in str(error.value)
    partial = tmp_path / "big.bin.part"
    assert partial.stat().st_size == 300_000 and not dest.exists()
    download(server.url, dest, file_digest_of(payload), timeout=5)
    assert dest.read_bytes() == payload and not partial.exists()
    assert server.ranges == [None, "bytes=300000-"]
    assert "resuming at 0.3 MB" in capsys.readouterr().out


def test_complete_part_is_verified_not_fetched_again(tmp_path, serve):
    payload = b"x" * 1000
    server = serve(payload)
    (tmp_path / "f.bin.part").write_bytes(payload)  # downloaded, but the process died before the rename
    download(server.url, tmp_path / "f.bin", file_digest_of(payload), timeout=5)
    assert (tmp_path / "f.bin").read_bytes() == payload and server.ranges == ["bytes=1000-"]


def test_server_stated_md5_is_checked_when_no_checksum_is_given(tmp_path, serve):
    import base64
    import hashlib

    payload = b"lra" * 5000
    good = base64.b64encode(hashlib.md5(payload).digest()).decode()
    server = serve(payload, {"x-goog-hash": f"crc32c=AAAAAA==, md5={good}"})
    download(server.url, tmp_path / "ok.bin", timeout=5)
    bad = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    server.extra_headers = {"x-goog-hash": f"crc32c=AAAAAA==, md5={bad}"}
    with pytest.raises(DataError, match="corrupt"):
        download(server.url, tmp_path / "bad.bin", timeout=5)
    assert not (tmp_path / "bad.bin").exists() and not (tmp_path / "bad.bin.part").exists()


def test_extract_only_selected_members(tmp_path):
    _tar(tmp_path / "a.tar.gz", {"r/keep/x.txt": b"1", "r/skip/y.txt": b"2", "r/keep/sub/z.txt": b"3"})
    extract(tmp_path / "a.tar.gz", tmp_path / "out", select=lambda name: "/keep/" in name)
    files = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.txt"))
    assert files == ["r/keep/sub/z.txt", "r/keep/x.txt"]
    _tar(tmp_path / "bad.tar.gz", {"r/keep/../../../evil.txt": b"x"})
    with pytest.raises(DataError, match="outside"):
        extract(tmp_path / "bad.tar.gz", tmp_path / "out", select=lambda name: "keep" in name)
    (tmp_path / "cut.tar.gz").write_bytes((tmp_path / "a.tar.gz").read_bytes()[:-40])
    with pytest.raises(DataError, match="corrupt"):
        extract(tmp_path / "cut.tar.gz", tmp_path / "out2", select=lambda name: True)
