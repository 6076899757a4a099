from __future__ import annotations

from pathlib import Path

import pytest

from gpuflow.core.errors import ObjectNotFoundError, UriError
from gpuflow.storage.local import LocalObjectStore, copy_atomically
from gpuflow.storage.uri import ObjectUri


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/a/b.png", ObjectUri("s3", "bucket", "a/b.png")),
        ("oss://bkt/key%20with%20space", ObjectUri("oss", "bkt", "key with space")),
        ("file:///srv/x.png", ObjectUri("file", "", "/srv/x.png")),
        ("FILE://localhost/srv/x.png", ObjectUri("file", "", "/srv/x.png")),
    ],
)
def test_uris_parse_into_scheme_bucket_and_key(uri: str, expected: ObjectUri) -> None:
    assert ObjectUri.parse(uri) == expected
    assert ObjectUri.parse(str(expected)) == expected


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("cat.png", "no scheme"),
        ("s3:///key", "no bucket"),
        ("file://host/x", "no host"),
        ("file:relative", "absolute"),
        ("s3://b/k?versionId=1", "query"),
    ],
)
def test_malformed_uris_are_refused_naming_the_uri(uri: str, reason: str) -> None:
    with pytest.raises(UriError) as error:
        ObjectUri.parse(uri)
    assert repr(uri) in str(error.value)
    assert reason in str(error.value)


def test_store_round_trip_and_listing(tmp_path: Path) -> None:
    store = LocalObjectStore(root=tmp_path / "store")
    source = tmp_path / "video.mp4"
    source.write_bytes(b"x" * 1000)
    uri = store.uri_for("outputs/run-1/video.mp4")
    assert store.upload(source, uri).size == 1000
    assert store.stat(uri).size == 1000
    assert [info.uri for info in store.list(store.uri_for("outputs"))] == [uri]
    destination = tmp_path / "back" / "video.mp4"
    store.download(uri, destination)
    assert destination.read_bytes() == source.read_bytes()


def test_store_refuses_uris_outside_its_root(tmp_path: Path) -> None:
    store = LocalObjectStore(root=tmp_path / "store")
    (tmp_path / "secret").write_text("no")
    for uri in ("file:///etc/passwd", f"file://{tmp_path}/store/../secret"):
        with pytest.raises(UriError, match="outside the store root"):
            store.stat(uri)
    with pytest.raises(UriError, match="escapes"):
        store.uri_for("../secret")
    with pytest.raises(UriError, match="serves file"):
        store.stat("s3://bucket/key")


def test_missing_objects_name_the_uri(tmp_path: Path) -> None:
    store = LocalObjectStore(root=tmp_path)
    uri = store.uri_for("nope.png")
    with pytest.raises(ObjectNotFoundError, match=r"nope\.png"):
        store.download(uri, tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()
    with pytest.raises(ObjectNotFoundError):
        list(store.list(store.uri_for("no-prefix")))


def test_a_failed_copy_leaves_no_partial_file(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()  # reading a directory fails midway through the copy
    destination = tmp_path / "out" / "file"
    with pytest.raises(OSError):
        copy_atomically(source, destination)
    assert list((tmp_path / "out").iterdir()) == []
