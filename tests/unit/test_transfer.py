"""Transfer machinery without a server: part planning, ETags, resume journal, safe keys."""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from awscrt.checksums import crc64nvme
from fastcrc import crc64

from gpuflow.core.errors import DiskFullError, IntegrityError, StoreError, UriError
from gpuflow.storage.transfer import (
    S3_MAX_PARTS,
    BackgroundDigest,
    DigestName,
    GiB,
    MiB,
    Part,
    TransferSettings,
    crc64nvme_combine,
    crc64xz_combine,
    download_ranges,
    file_digest,
    journal_path,
    multipart_etag,
    new_digest,
    partial_path,
    plan_parts,
)
from gpuflow.storage.uri import safe_relative_path
from tests.support.files import xz_container_crc64
from tests.support.full_disk import full_filesystem

SETTINGS = TransferSettings(max_concurrency=4, single_stream_below=5 * MiB, min_part_size=5 * MiB)


@pytest.mark.parametrize("size", [0, 1, 5 * MiB, 5 * MiB + 1, 1 * GiB + 7, 5000 * GiB])
def test_parts_cover_the_object_within_s3_limits(size: int) -> None:
    parts = plan_parts(size, SETTINGS)
    assert parts[0].offset == 0 and sum(part.length for part in parts) == size
    assert all(a.offset + a.length == b.offset for a, b in itertools.pairwise(parts))
    assert len(parts) <= S3_MAX_PARTS
    if len(parts) > 1:
        assert all(5 * MiB <= part.length <= 5 * GiB for part in parts[:-1])


def test_small_objects_are_one_stream_and_alignment_follows_upload_parts() -> None:
    assert plan_parts(5 * MiB, SETTINGS) == [Part(1, 0, 5 * MiB)]
    aligned = plan_parts(100 * MiB, SETTINGS, align=7 * MiB)
    assert all(part.offset % (7 * MiB) == 0 for part in aligned)


def test_multipart_etag_is_md5_of_part_md5s() -> None:
    parts = [b"a" * 10, b"b" * 3]
    md5s = [hashlib.md5(part, usedforsecurity=False).hexdigest() for part in parts]
    joined = b"".join(hashlib.md5(part, usedforsecurity=False).digest() for part in parts)
    assert multipart_etag(md5s) == hashlib.md5(joined, usedforsecurity=False).hexdigest() + "-2"


class _Source:
    """An in-memory object that records the parts asked for and can fail one."""

    def __init__(self, data: bytes, fail_part: int | None = None) -> None:
        self.data = data
        self.fail_part = fail_part
        self.fetched: list[int] = []

    @contextlib.contextmanager
    def stream(self, part: Part, whole: bool) -> Iterator[io.BytesIO]:
        self.fetched.append(part.number)
        if part.number == self.fail_part:
            raise KeyboardInterrupt  # as if the process were killed as this part began
        yield io.BytesIO(self.data[part.offset : part.offset + part.length])


def _download(source: _Source, destination: Path, settings: TransferSettings) -> object:
    size = len(source.data)
    return download_ranges(
        "s3://b/k",
        destination,
        size=size,
        version="v1",
        parts=plan_parts(size, settings),
        stream=source.stream,
        settings=settings,
    )


def test_interrupted_download_resumes_and_refetches_a_corrupted_finished_part(
    tmp_path: Path,
) -> None:
    serial = SETTINGS.model_copy(update={"max_concurrency": 1, "max_part_size": 5 * MiB})
    data = os.urandom(20 * MiB)  # four parts
    destination = tmp_path / "out.bin"
    with pytest.raises(KeyboardInterrupt):
        _download(_Source(data, fail_part=3), destination, serial)
    assert not destination.exists() and journal_path(destination).exists()
    with partial_path(destination).open("r+b") as handle:  # damage finished part 2 on disk
        handle.seek(5 * MiB + 1)
        handle.write(b"\x00\xff")

    again = _Source(data)
    _download(again, destination, serial)

    assert sorted(again.fetched) == [2, 3, 4]
    assert destination.read_bytes() == data
    assert not journal_path(destination).exists()


class _BreaksOnce:
    """Part ``number``'s body loses its connection after ``after`` bytes, the first time."""

    def __init__(self, data: bytes, number: int, after: int) -> None:
        self.data, self.number, self.after, self.broken = data, number, after, False

    @contextlib.contextmanager
    def stream(self, part: Part, whole: bool) -> Iterator[io.BytesIO | _Breaking]:
        body = self.data[part.offset : part.offset + part.length]
        if part.number == self.number and not self.broken:
            self.broken = True
            yield _Breaking(body[: self.after])
            return
        yield io.BytesIO(body)


class _Breaking:
    """Sends its bytes, then fails as a reset connection does."""

    def __init__(self, data: bytes) -> None:
        self._body = io.BytesIO(data)

    def readinto(self, buffer: memoryview, /) -> int:
        count = self._body.readinto(buffer)
        if not count:
            raise StoreError("s3://b/k: connection lost mid-part")
        return count


def test_bytes_fetched_counts_what_arrived_including_a_retried_part(tmp_path: Path) -> None:
    serial = SETTINGS.model_copy(update={"max_concurrency": 1, "max_part_size": 5 * MiB})
    data = os.urandom(20 * MiB)  # four parts
    destination = tmp_path / "out.bin"
    with pytest.raises(KeyboardInterrupt):
        _download(_Source(data, fail_part=3), destination, serial)

    resumed = download_ranges(
        "s3://b/k",
        destination,
        size=len(data),
        version="v1",
        parts=plan_parts(len(data), serial),
        stream=_BreaksOnce(data, number=3, after=MiB + 7).stream,
        settings=serial,
    )

    # Parts 1 and 2 were done before the kill. Parts 3 and 4 move now, and the bytes of
    # part 3's broken first attempt crossed the network too.
    assert resumed.parts_resumed == 2
    assert resumed.bytes_fetched == 10 * MiB + MiB + 7
    assert destination.read_bytes() == data


@pytest.mark.parametrize("digest", ["md5", "sha256"])
def test_the_whole_object_digest_is_taken_in_order_also_across_a_resume(
    tmp_path: Path, digest: DigestName
) -> None:
    settings = SETTINGS.model_copy(update={"max_concurrency": 3, "max_part_size": 5 * MiB})
    data = os.urandom(40 * MiB + 123)  # nine parts, the last a short one
    destination = tmp_path / "out.bin"
    seen: list[str | None] = []

    def keep(path: Path, digests: list[str], whole: str | None) -> None:
        seen.append(whole)

    def download(source: _Source) -> object:
        return download_ranges(
            "s3://b/k", destination, size=len(data), version="v1",
            parts=plan_parts(len(data), settings), stream=source.stream, settings=settings,
            whole_digest=digest, verify=keep,
        )  # fmt: skip

    expected = hashlib.new(digest, data).hexdigest()
    download(_Source(data))
    destination.unlink()
    with pytest.raises(KeyboardInterrupt):
        download(_Source(data, fail_part=6))  # parts 1 to 5 or so done, then a kill
    resumed = _Source(data)
    download(resumed)

    assert 1 not in resumed.fetched, "finished parts were read back, not fetched"
    assert seen == [expected, expected]
    assert destination.read_bytes() == data


def test_a_failed_verification_publishes_nothing(tmp_path: Path) -> None:
    def reject(path: Path, digests: list[str], whole: str | None) -> None:
        raise IntegrityError("s3://b/k", "checksum mismatch")

    data = os.urandom(12 * MiB)
    destination = tmp_path / "out.bin"
    with pytest.raises(IntegrityError, match="s3://b/k"):
        download_ranges(
            "s3://b/k",
            destination,
            size=len(data),
            version="v1",
            parts=plan_parts(len(data), SETTINGS),
            stream=_Source(data).stream,
            settings=SETTINGS,
            verify=reject,
        )
    assert list(tmp_path.iterdir()) == []


def test_a_part_that_ends_short_fails_naming_the_uri(tmp_path: Path) -> None:
    @contextlib.contextmanager
    def short(part: Part, whole: bool) -> Iterator[io.BytesIO]:
        yield io.BytesIO(b"x" * (part.length - 1))

    with pytest.raises(IntegrityError, match=r"s3://b/k.*ended after"):
        download_ranges(
            "s3://b/k",
            tmp_path / "out",
            size=100,
            version="v1",
            parts=[Part(1, 0, 100)],
            stream=short,
            settings=SETTINGS,
        )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "key", ["../../etc/passwd", "/etc/passwd", "a/../../b", "a//b", "a\\..\\b", ".", "", "a/./b"]
)
def test_keys_that_could_escape_are_refused(key: str) -> None:
    with pytest.raises(UriError, match="outside the destination"):
        safe_relative_path(key, f"s3://bucket/{key}")


def test_plain_nested_keys_are_kept() -> None:
    assert str(safe_relative_path("weights/part-1.bin", "s3://b/weights/part-1.bin")) == (
        "weights/part-1.bin"
    )


def test_a_full_disk_is_final_and_gives_its_space_back(tmp_path: Path) -> None:
    data = os.urandom(2 * MiB)
    with full_filesystem(tmp_path / "nas", size_kib=1024) as nas:
        destination = nas / "models" / "m" / "weights.bin"
        source = _Source(data)
        with pytest.raises(DiskFullError, match="no space left") as failure:
            _download(source, destination, SETTINGS)
        assert not failure.value.retryable
        assert source.fetched == [1]  # not retried: a full disk stays full
        assert list(destination.parent.iterdir()) == []  # no sparse partial left behind


def test_the_whole_object_digest_is_right_when_a_part_it_follows_is_retried(
    tmp_path: Path,
) -> None:
    # The digest follows part 1 as its bytes arrive; the first attempt breaks after more
    # than one digest step, so the digest has taken bytes the retry then writes again.
    settings = SETTINGS.model_copy(update={"max_concurrency": 2, "max_part_size": 12 * MiB})
    data = os.urandom(30 * MiB + 5)
    seen: list[str | None] = []

    download_ranges(
        "s3://b/k", tmp_path / "out.bin", size=len(data), version="v1",
        parts=plan_parts(len(data), settings),
        stream=_BreaksOnce(data, number=1, after=9 * MiB + 3).stream, settings=settings,
        whole_digest="md5", verify=lambda path, digests, whole: seen.append(whole),
    )  # fmt: skip

    assert seen == [hashlib.md5(data, usedforsecurity=False).hexdigest()]
    assert (tmp_path / "out.bin").read_bytes() == data


def test_a_background_digest_gives_the_file_digest_and_a_stopped_one_raises(
    tmp_path: Path,
) -> None:
    data = os.urandom(20 * MiB + 1)
    (tmp_path / "f").write_bytes(data)

    digest = BackgroundDigest(tmp_path / "f", "md5")

    assert digest.result() == hashlib.md5(data, usedforsecurity=False).hexdigest()
    stop = threading.Event()
    stop.set()
    with pytest.raises(StoreError, match="stopped"):
        file_digest(tmp_path / "f", "md5", stop=stop)


@pytest.mark.parametrize(
    ("first", "second"), [(0, 0), (0, 7), (7, 0), (1, 1), (1000, 333), (5 * MiB + 1, 3 * MiB)]
)
def test_the_crc64nvme_of_two_pieces_combines_into_that_of_the_whole(
    first: int, second: int
) -> None:
    a, b = os.urandom(first), os.urandom(second)
    assert crc64nvme_combine(crc64nvme(a), crc64nvme(b), len(b)) == crc64nvme(a + b)


@pytest.mark.parametrize("size", [1, 9, 65537])
def test_the_crc64xz_digest_is_liblzmas_crc64_and_oss_check_value(size: int) -> None:
    # OSS, COS and TOS name it CRC-64/ECMA-182: 11051210869376104954 for "123456789" (as
    # their SDKs document); liblzma, an independent implementation, agrees on random data.
    digest = new_digest("crc64xz")
    digest.update(b"123456789")
    assert int(digest.hexdigest(), 16) == 11051210869376104954
    data = os.urandom(size)
    digest = new_digest("crc64xz")
    digest.update(data[: size // 2])
    digest.update(memoryview(data)[size // 2 :])
    assert int(digest.hexdigest(), 16) == xz_container_crc64(data)


@pytest.mark.parametrize(("first", "second"), [(0, 5), (7, 0), (1000, 333), (MiB + 1, 3 * MiB)])
def test_the_crc64xz_of_two_pieces_combines_into_that_of_the_whole(first: int, second: int) -> None:
    a, b = os.urandom(first), os.urandom(second)
    assert crc64xz_combine(crc64.xz(a), crc64.xz(b), len(b)) == crc64.xz(a + b)


def test_a_whole_crc64nvme_comes_from_the_parts_in_order_not_any_order() -> None:
    parts = [os.urandom(size) for size in (3, 4096, 1, 65537)]
    combined = 0
    for part in parts:
        combined = crc64nvme_combine(combined, crc64nvme(part), len(part))
    assert combined == crc64nvme(b"".join(parts))
    swapped = crc64nvme_combine(crc64nvme(parts[1]), crc64nvme(parts[0]), len(parts[0]))
    assert swapped != crc64nvme(parts[0] + parts[1])
