"""Transfer machinery shared by the object stores, free of any protocol.

A store hands in a function that streams one byte range (downloads) or sends one
part (uploads); this module plans the parts, runs them in parallel, checksums
them, journals finished parts so a killed download resumes where it stopped, and
publishes a download at its final path only once it is complete and verified.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, TypeVar, cast

from awscrt.checksums import crc64nvme
from fastcrc import crc64
from pydantic import BaseModel, ConfigDict, Field

from gpuflow.core.errors import (
    DiskFullError,
    GpuflowError,
    IntegrityError,
    StoreError,
    is_disk_full,
)

MiB = 1024 * 1024
GiB = 1024 * MiB
# S3's limits: parts of 5 MiB to 5 GiB (the last may be smaller), at most 10,000 of them.
S3_MIN_PART = 5 * MiB
S3_MAX_PART = 5 * GiB
S3_MAX_PARTS = 10_000
_JOURNAL_FORMAT = 1
_DIGEST_STEP = 4 * MiB

DigestName = Literal["md5", "sha256", "crc64nvme", "crc64xz"]
T = TypeVar("T")


class TransferSettings(BaseModel):
    """How an object is cut into parts and how many move at once."""

    model_config = ConfigDict(frozen=True)

    max_concurrency: int = Field(
        default=8, ge=1, le=64, description="Parts (or files) in flight at once."
    )
    single_stream_below: int = Field(
        default=16 * MiB,
        ge=0,
        description="Objects up to this size move in one request: below it, parallel "
        "parts cost more in requests than they gain.",
    )
    min_part_size: int = Field(default=8 * MiB, ge=S3_MIN_PART, le=S3_MAX_PART)
    max_part_size: int = Field(default=32 * MiB, ge=S3_MIN_PART, le=S3_MAX_PART)
    chunk_size: int = Field(
        default=256 * 1024,
        ge=16 * 1024,
        description="Bytes read from the network per call.",
    )
    part_attempts: int = Field(
        default=3, ge=1, le=10, description="Tries per part before the transfer fails."
    )


@dataclass(frozen=True)
class Part:
    """One byte range of an object; ``number`` counts from 1 as S3's part numbers do."""

    number: int
    offset: int
    length: int

    @property
    def end(self) -> int:
        """The last byte's offset, inclusive (as HTTP ranges count)."""
        return self.offset + self.length - 1


def plan_parts(size: int, settings: TransferSettings, align: int | None = None) -> list[Part]:
    """Cut ``size`` bytes into parts sized for ``settings``' concurrency.

    Small objects move in one stream. Larger ones get about two parts per worker
    (so a slow part does not leave the others idle at the end), within the part
    size bounds and S3's 10,000-part limit. ``align`` makes every part boundary a
    multiple of it: a download aligned to the object's upload parts can check each
    part's MD5 against the multipart ETag without a second pass over the file.
    """
    if size < 0:
        raise ValueError(f"size {size} is negative")
    if size <= settings.single_stream_below or size <= settings.min_part_size:
        return [Part(1, 0, size)]
    part_size = math.ceil(size / (settings.max_concurrency * 2))
    part_size = min(max(part_size, settings.min_part_size), settings.max_part_size)
    part_size = max(part_size, math.ceil(size / S3_MAX_PARTS))
    part_size = math.ceil(part_size / MiB) * MiB
    if align:
        part_size = max(1, math.ceil(part_size / align)) * align
    return [
        Part(number, offset, min(part_size, size - offset))
        for number, offset in enumerate(range(0, size, part_size), start=1)
    ]


class Digest(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...


class _Crc64:
    """A CRC-64 behind hashlib's interface, from a function ``(data, previous) -> crc``.

    CRC-64/NVME (the AWS Common Runtime's, with carry-less multiplication instructions)
    is the cheapest check for a resume journal; CRC-64/XZ (fastcrc's) is the one OSS, COS
    and TOS keep of every object, as "CRC-64/ECMA-182". Both run at several GB/s and
    without the GIL: a few per cent of the cost of zlib's CRC-32.
    """

    def __init__(self, update: Callable[[bytes | memoryview, int], int]) -> None:
        self._update = update
        self._value = 0

    def update(self, data: bytes | memoryview, /) -> None:
        self._value = self._update(data, self._value)

    def hexdigest(self) -> str:
        return f"{self._value:016x}"


def _crc64xz(data: bytes | memoryview, previous: int) -> int:
    return crc64.xz(data, previous)


_CRC64_ONE = 1 << 63  # x^0 in the reflected order


def _crc64_multiply(a: int, b: int, poly: int) -> int:
    """a(x) * b(x) modulo ``poly``, all in the reflected order (zlib's multmodp)."""
    mask, product = _CRC64_ONE, 0
    while True:
        if a & mask:
            product ^= b
            if not a & (mask - 1):
                return product
        mask >>= 1
        b = (b >> 1) ^ poly if b & 1 else b >> 1


class _Crc64Combine:
    """The CRC-64 of A + B from A's, B's and B's length, as zlib's crc32_combine: the
    whole object's CRC from its parts', which the workers took in parallel (microseconds,
    no byte read again). For the reflected CRCs with all-ones start and end, as both here."""

    def __init__(self, reflected_poly: int) -> None:
        self._poly = reflected_poly
        # x^(2^k) modulo the polynomial, for k = 0..63
        self._powers = [_CRC64_ONE >> 1]
        for _ in range(63):
            self._powers.append(self._multiply(self._powers[-1], self._powers[-1]))

    def _multiply(self, a: int, b: int) -> int:
        return _crc64_multiply(a, b, self._poly)

    def __call__(self, first: int, second: int, second_length: int) -> int:
        shift, bit = _CRC64_ONE, 3  # x^(8 * second_length), from its binary digits
        length = second_length
        while length:
            if length & 1:
                shift = self._multiply(self._powers[bit % 64], shift)
            length >>= 1
            bit += 1
        return self._multiply(shift, first) ^ second

    def of_parts(self, parts: Sequence[Part], part_crcs: Sequence[int]) -> int:
        """The CRC of the whole object from its parts' CRCs, in part order."""
        crc = 0  # of nothing
        for part, part_crc in zip(parts, part_crcs, strict=True):
            crc = self(crc, part_crc, part.length)
        return crc


# The polynomials bit-reversed: CRC-64/NVME's, and ECMA-182's (CRC-64/XZ's).
crc64nvme_combine = _Crc64Combine(0x9A6C9329AC4BC9B5)
crc64xz_combine = _Crc64Combine(0xC96C5795D7870F42)
_COMBINE = {"crc64nvme": crc64nvme_combine, "crc64xz": crc64xz_combine}


def new_digest(name: DigestName) -> Digest:
    if name == "crc64nvme":
        return _Crc64(crc64nvme)
    if name == "crc64xz":
        return _Crc64(_crc64xz)
    return hashlib.new(name, usedforsecurity=False) if name == "md5" else hashlib.sha256()


def file_digest(
    path: Path,
    name: DigestName,
    offset: int = 0,
    length: int | None = None,
    stop: threading.Event | None = None,
) -> str:
    """Digest of ``length`` bytes of ``path`` from ``offset`` (the whole rest by default);
    ``stop`` set ends it early with ``_Stopped``."""
    digest = new_digest(name)
    with path.open("rb") as handle:
        handle.seek(offset)
        remaining = length if length is not None else math.inf
        while remaining > 0:
            if stop is not None and stop.is_set():
                raise _Stopped(f"digest of {path} stopped")
            chunk = handle.read(int(min(8 * MiB, remaining)))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


class BackgroundDigest:
    """The digest of a whole file, taken by a thread of its own while the caller works
    (reads the uploaded object back meanwhile, so the two passes overlap)."""

    def __init__(self, path: Path, name: DigestName) -> None:
        self._stop = threading.Event()
        self._digest: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(path, name), name="gpuflow-file-digest", daemon=True
        )
        self._thread.start()

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return cast(str, self._digest)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self, path: Path, name: DigestName) -> None:
        try:
            self._digest = file_digest(path, name, stop=self._stop)
        except BaseException as error:  # handed to the caller by result()
            self._error = error


def multipart_etag(part_md5s: Sequence[str]) -> str:
    """S3's ETag of a multipart object: MD5 of the parts' binary MD5s, then ``-<count>``."""
    joined = b"".join(bytes.fromhex(md5) for md5 in part_md5s)
    return f"{hashlib.md5(joined, usedforsecurity=False).hexdigest()}-{len(part_md5s)}"


class _BlockDigester:
    """Digests of consecutive ``block_size`` blocks of a part (one digest when unset)."""

    def __init__(self, name: DigestName, length: int, block_size: int | None) -> None:
        self._name = name
        self._block_size = block_size or max(length, 1)
        self._current = new_digest(name)
        self._filled = 0
        self.digests: list[str] = []

    def update(self, data: memoryview) -> None:
        while data:
            room = self._block_size - self._filled
            piece, data = data[:room], data[room:]
            self._current.update(piece)
            self._filled += len(piece)
            if self._filled == self._block_size:
                self._close_block()

    def finish(self) -> list[str]:
        if self._filled or not self.digests:
            self._close_block()
        return self.digests

    def _close_block(self) -> None:
        self.digests.append(self._current.hexdigest())
        self._current = new_digest(self._name)
        self._filled = 0


class PartReader(Protocol):
    """The body of one part's response, read into the caller's buffer."""

    def readinto(self, buffer: memoryview, /) -> int: ...


RangeStream = Callable[[Part, bool], contextlib.AbstractContextManager[PartReader]]
"""Opens the response for a part; the flag is True when the part is the whole object."""

Verifier = Callable[[Path, list[str], str | None], None]
"""Checks the downloaded file, its block digests and (when asked for) the whole object's
digest; raises ``IntegrityError`` on a mismatch."""


def partial_path(destination: Path) -> Path:
    return destination.with_name(f".{destination.name}.gpuflow-partial")


def journal_path(destination: Path) -> Path:
    return destination.with_name(f".{destination.name}.gpuflow-journal")


@dataclass(frozen=True)
class DownloadResult:
    size: int
    digests: list[str]
    bytes_fetched: int  # body bytes received by this call, failed attempts included
    parts_resumed: int


def download_ranges(
    uri: str,
    destination: Path,
    *,
    size: int,
    version: str,
    parts: list[Part],
    stream: RangeStream,
    settings: TransferSettings,
    digest: DigestName = "crc64nvme",
    block_size: int | None = None,
    whole_digest: DigestName | None = None,
    verify: Verifier | None = None,
) -> DownloadResult:
    """Fetch ``parts`` of ``uri`` in parallel into ``destination``, resuming a killed run.

    Bytes land in a hidden ``.<name>.gpuflow-partial`` file beside the destination; a
    journal beside it records each finished part with its digest. A rerun for the
    same object ``version`` and size re-checks the journaled parts on disk and
    fetches only the rest. The destination appears only after every part arrived,
    ``verify`` accepted the file and the data reached the disk. One destination has
    one writer at a time (callers hold a lock or own the directory).

    ``whole_digest`` asks for the digest of the whole object, for ``verify``. A CRC-64 over
    parts that each have one (``digest`` the same) is combined from theirs. Any other is
    computed in order while later parts still download, from the parts' buffers, so the
    file is not read a second time (only parts resumed from an earlier run are read back).
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(destination)
    journal = journal_path(destination)
    header = {
        "format": _JOURNAL_FORMAT,
        "uri": uri,
        "size": size,
        "version": version,
        "digest": digest,
        "block_size": block_size,
        "parts": [[part.offset, part.length] for part in parts],
    }
    try:
        return _download_into(
            uri, destination, partial, journal, header, size, parts, stream, settings, digest,
            block_size, whole_digest, verify,
        )  # fmt: skip
    except OSError as error:
        if not is_disk_full(error):
            raise
        # Nothing to resume until someone frees space: give back what the partial file holds.
        _discard(partial, journal)
        if isinstance(error, DiskFullError):
            raise
        raise DiskFullError(str(destination), error) from error


def _download_into(
    uri: str,
    destination: Path,
    partial: Path,
    journal: Path,
    header: dict[str, object],
    size: int,
    parts: list[Part],
    stream: RangeStream,
    settings: TransferSettings,
    digest: DigestName,
    block_size: int | None,
    whole_digest: DigestName | None,
    verify: Verifier | None,
) -> DownloadResult:
    resumable = len(parts) > 1
    done = _resume(partial, journal, header, parts, digest, block_size) if resumable else {}
    if not done:
        _start_fresh(partial, journal, header if resumable else None, size)
    todo = [part for part in parts if part.number not in done]
    fetched = 0
    whole: str | None = None
    fd = os.open(partial, os.O_RDWR)
    cancelled = threading.Event()
    combine = _COMBINE.get(digest) if whole_digest == digest and block_size is None else None
    ordered = (
        _OrderedDigest(uri, whole_digest, parts, set(done), fd, settings, cancelled)
        if whole_digest and combine is None
        else None
    )
    try:
        with (
            journal.open("a") if resumable else contextlib.nullcontext() as journal_file,
            ThreadPoolExecutor(
                max_workers=max(1, min(settings.max_concurrency, len(todo))),
                thread_name_prefix="gpuflow-download",
            ) as pool,
        ):
            journal_lock = threading.Lock()

            def fetch(part: Part) -> tuple[list[str], int]:
                buffer = ordered.buffer_for(part) if ordered else None
                try:
                    if cancelled.is_set():
                        raise _Stopped(f"{uri}: download stopped after another part failed")
                    digests, received = _fetch_part(
                        uri, fd, part, len(parts) == 1, stream, settings, digest, block_size,
                        cancelled, buffer, ordered.arrived if ordered else None,
                    )  # fmt: skip
                except BaseException:
                    cancelled.set()  # before this worker picks up the next queued part
                    if ordered:
                        ordered.give_back(part)
                    raise
                if journal_file is not None:
                    with journal_lock:
                        journal_file.write(json.dumps({"part": part.number, "digests": digests}))
                        journal_file.write("\n")
                        journal_file.flush()
                return digests, received

            futures: dict[int, Future[tuple[list[str], int]]] = {}
            for part in todo:
                # In part order: the part the digest waits for always has its buffer.
                if ordered and not ordered.reserve():
                    break  # a part failed: _wait_all raises its error
                futures[part.number] = pool.submit(fetch, part)
            try:
                _wait_all(futures.values(), cancelled)
            except _Stopped:
                if ordered:
                    ordered.raise_error()  # the digest's failure stopped the parts
                raise
            for number, future in futures.items():
                done[number], received = future.result()
                fetched += received
            if ordered:
                whole = ordered.result()
        os.fsync(fd)
    finally:
        cancelled.set()  # ends the digest thread too, whatever happened
        if ordered:
            ordered.join()
        os.close(fd)
    digests = [block for part in parts for block in done[part.number]]
    if combine is not None:
        whole = f"{combine.of_parts(parts, [int(part_crc, 16) for part_crc in digests]):016x}"
    if partial.stat().st_size != size:
        _discard(partial, journal)
        raise IntegrityError(uri, f"expected {size} bytes, wrote {partial.stat().st_size}")
    try:
        if verify is not None:
            verify(partial, digests, whole)
    except IntegrityError:
        _discard(partial, journal)
        raise
    partial.replace(destination)
    journal.unlink(missing_ok=True)
    return DownloadResult(size, digests, fetched, len(parts) - len(todo))


class _OrderedDigest:
    """The whole object's digest, fed in order by a thread of its own.

    Workers report how far each part's buffer is filled; the digest follows the first
    part not yet digested as its bytes arrive (not once it is complete: with 8 parts in
    flight the first completes only after an eighth of the object), while later parts
    still download. Buffers are reserved in part order and at most ``max_concurrency + 2``
    exist at once (memory: that many parts), so the part the digest waits for is always
    downloading. Parts resumed from an earlier run are read back from the file.
    """

    def __init__(
        self,
        uri: str,
        name: DigestName,
        parts: list[Part],
        resumed: set[int],
        fd: int,
        settings: TransferSettings,
        cancelled: threading.Event,
    ) -> None:
        self._uri = uri
        self._digest = new_digest(name)
        self._parts = parts
        self._fd = fd
        self._cancelled = cancelled
        self._resumed = resumed
        self._buffers: dict[int, memoryview] = {}
        # Bytes at the start of each part's buffer that hold the object's bytes. A retried
        # attempt writes the same bytes (the object is pinned) from 0 again, so the count
        # only grows.
        self._arrived: dict[int, int] = {}
        self._free: list[bytearray] = []
        self._slots = threading.Semaphore(settings.max_concurrency + 2)
        self._changed = threading.Condition()
        self._error: BaseException | None = None
        self._finished = False
        self._thread = threading.Thread(target=self._run, name="gpuflow-digest", daemon=True)
        self._thread.start()

    def reserve(self) -> bool:
        """Wait for room for one more part's buffer; False once the download is stopped."""
        while not self._slots.acquire(timeout=0.1):
            if self._cancelled.is_set():
                return False
        return not self._cancelled.is_set()

    def buffer_for(self, part: Part) -> memoryview:
        with self._changed:
            buffer = self._free.pop() if self._free else None
        if buffer is None:
            # Reused rather than reallocated: a fresh buffer costs a page fault per page.
            buffer = bytearray(max(part.length for part in self._parts))
        view = memoryview(buffer)[: part.length]
        with self._changed:
            self._buffers[part.number] = view
        return view

    def arrived(self, part: Part, count: int) -> None:
        """The first ``count`` bytes of ``part``'s buffer hold the object's bytes."""
        with self._changed:
            if count > self._arrived.get(part.number, 0):
                self._arrived[part.number] = count
                self._changed.notify_all()

    def give_back(self, part: Part) -> None:
        """A part that failed frees its slot (the download is being stopped)."""
        self._slots.release()

    def raise_error(self) -> None:
        """Raise what stopped the digest thread, if anything did."""
        self._thread.join()
        if self._error is not None:
            raise self._error

    def result(self) -> str:
        self.raise_error()
        if not self._finished:
            raise _Stopped("download stopped before the whole-object digest was done")
        return self._digest.hexdigest()

    def join(self) -> None:
        self._thread.join()

    def _run(self) -> None:
        try:
            for part in self._parts:
                if part.number in self._resumed or not part.length:
                    self._hash_from_file(part)
                    continue
                digested = 0
                while digested < part.length:
                    with self._changed:
                        while self._arrived.get(part.number, 0) <= digested:
                            if self._cancelled.is_set():
                                return
                            self._changed.wait(timeout=0.1)
                        buffer = self._buffers[part.number]
                        available = self._arrived[part.number]
                    self._digest.update(buffer[digested:available])
                    digested = available
                with self._changed:
                    del self._buffers[part.number], self._arrived[part.number]
                    self._free.append(cast(bytearray, buffer.obj))
                self._slots.release()
            self._finished = True
        except BaseException as error:  # handed to the caller by result()
            self._error = error
            self._cancelled.set()

    def _hash_from_file(self, part: Part) -> None:
        offset, end = part.offset, part.offset + part.length
        while offset < end and not self._cancelled.is_set():
            chunk = os.pread(self._fd, min(8 * MiB, end - offset), offset)
            if not chunk:
                raise IntegrityError(self._uri, f"resumed part {part.number} is short on disk")
            self._digest.update(chunk)
            offset += len(chunk)


class _Stopped(StoreError):
    """A part given up because another part failed first."""


def _wait_all(futures: Iterable[Future[T]], cancelled: threading.Event) -> None:
    """Wait for every future; on the first failure stop the others and raise it."""
    pending = list(futures)
    finished, _ = wait(pending, return_when=FIRST_EXCEPTION)
    if any(future.exception() is not None for future in finished):
        cancelled.set()
        for future in pending:
            future.cancel()  # parts not started yet never start
        started = [future for future in pending if not future.cancelled()]
        wait(started)
        errors = [error for future in started if (error := future.exception()) is not None]
        # The failure that stopped the others, not one of the stops it caused.
        raise next((error for error in errors if not isinstance(error, _Stopped)), errors[0])


def _fetch_part(
    uri: str,
    fd: int,
    part: Part,
    whole: bool,
    stream: RangeStream,
    settings: TransferSettings,
    digest: DigestName,
    block_size: int | None,
    cancelled: threading.Event,
    part_buffer: memoryview | None,
    arrived: Callable[[Part, int], None] | None,
) -> tuple[list[str], int]:
    """The part's block digests and the bytes received for it over all attempts.

    With ``part_buffer`` the part's bytes also stay there (for the whole-object digest,
    told by ``arrived`` how far the buffer is filled); without, one small buffer is
    reused: it stays in the CPU cache between the copy from the socket and the copy into
    the file.
    """
    received = [0]  # grows as bytes arrive, so an attempt that fails midway still counts
    buffer = part_buffer or memoryview(bytearray(min(settings.chunk_size, max(part.length, 1))))
    for attempt in range(1, settings.part_attempts + 1):
        digester = _BlockDigester(digest, part.length, block_size)
        try:
            with stream(part, whole) as reader:
                count = _read_part(
                    uri, fd, part, reader, digester, settings, cancelled, buffer, received,
                    arrived,
                )  # fmt: skip
                if count < part.length:
                    raise IntegrityError(
                        uri, f"part {part.number} ended after {count} of {part.length} bytes"
                    )
                if reader.readinto(memoryview(bytearray(1))):
                    raise IntegrityError(uri, f"part {part.number} sent more than {part.length} B")
            return digester.finish(), received[0]
        except GpuflowError as error:
            if not error.retryable or cancelled.is_set() or attempt == settings.part_attempts:
                raise
        except OSError as error:
            # Network resets surface as OSError subclasses; a full disk is final.
            if is_disk_full(error):
                raise DiskFullError(uri, error) from error
            if isinstance(error, FileNotFoundError | PermissionError) or attempt == (
                settings.part_attempts
            ):
                raise StoreError(f"{uri}: part {part.number} failed: {error}") from error
    raise AssertionError("unreachable: the last attempt returns or raises")


def _read_part(
    uri: str,
    fd: int,
    part: Part,
    reader: PartReader,
    digester: _BlockDigester,
    settings: TransferSettings,
    cancelled: threading.Event,
    buffer: memoryview,
    total_received: list[int],
    arrived: Callable[[Part, int], None] | None,
) -> int:
    # A buffer as long as the part keeps every byte at its offset; a shorter one is
    # reused for each read.
    keeps_part = len(buffer) >= part.length
    received = reported = 0
    while received < part.length:
        if cancelled.is_set():
            raise _Stopped(f"{uri}: download stopped after another part failed")
        start = received if keeps_part else 0
        room = settings.chunk_size if keeps_part else len(buffer)
        count = reader.readinto(buffer[start : start + min(room, part.length - received)])
        if not count:
            break
        chunk = buffer[start : start + count]
        digester.update(chunk)
        written = 0
        while written < count:
            written += os.pwrite(fd, chunk[written:], part.offset + received + written)
        received += count
        total_received[0] += count
        # Told in steps of a few MiB: a wake-up of the digest thread per read costs more
        # than the digest gains by starting a little earlier.
        if (
            arrived is not None
            and keeps_part
            and (received - reported >= _DIGEST_STEP or received == part.length)
        ):
            arrived(part, received)
            reported = received
    return received


def _start_fresh(partial: Path, journal: Path, header: dict[str, object] | None, size: int) -> None:
    journal.unlink(missing_ok=True)
    with partial.open("wb") as handle:
        handle.truncate(size)
    if header is not None:
        journal.write_text(json.dumps(header) + "\n")


def _resume(
    partial: Path,
    journal: Path,
    header: dict[str, object],
    parts: list[Part],
    digest: DigestName,
    block_size: int | None,
) -> dict[int, list[str]]:
    """Parts a previous run finished whose bytes on disk still match their digests."""
    try:
        lines = journal.read_text().splitlines()
        if json.loads(lines[0]) != header or partial.stat().st_size != header["size"]:
            return {}
        records = [json.loads(line) for line in lines[1:] if line.endswith("}")]
    except (OSError, ValueError, IndexError):
        return {}
    by_number = {part.number: part for part in parts}
    done: dict[int, list[str]] = {}
    for record in records:
        part = by_number.get(record.get("part"))
        if part is None:
            continue
        on_disk = _BlockDigester(digest, part.length, block_size)
        with partial.open("rb") as handle:
            handle.seek(part.offset)
            remaining = part.length
            while remaining:
                chunk = handle.read(min(8 * MiB, remaining))
                if not chunk:
                    break
                on_disk.update(memoryview(chunk))
                remaining -= len(chunk)
        if on_disk.finish() == record.get("digests"):
            done[part.number] = record["digests"]
    return done


def _discard(partial: Path, journal: Path) -> None:
    partial.unlink(missing_ok=True)
    journal.unlink(missing_ok=True)


def upload_parts(
    uri: str,
    source: Path,
    parts: list[Part],
    send: Callable[[Part, bytes], T],
    settings: TransferSettings,
) -> list[T]:
    """Read each part of ``source`` and ``send`` it, in parallel; results in part order."""
    fd = os.open(source, os.O_RDONLY)
    cancelled = threading.Event()

    def read_and_send(part: Part) -> T:
        for attempt in range(1, settings.part_attempts + 1):
            if cancelled.is_set():
                raise _Stopped(f"{uri}: upload stopped after another part failed")
            data = _pread_all(fd, part)
            try:
                return send(part, data)
            except GpuflowError as error:
                if not error.retryable or attempt == settings.part_attempts:
                    raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    try:
        with ThreadPoolExecutor(
            max_workers=max(1, min(settings.max_concurrency, len(parts))),
            thread_name_prefix="gpuflow-upload",
        ) as pool:
            futures = [pool.submit(read_and_send, part) for part in parts]
            _wait_all(futures, cancelled)
            return [future.result() for future in futures]
    finally:
        os.close(fd)


def _pread_all(fd: int, part: Part) -> bytes:
    data = os.pread(fd, part.length, part.offset)
    if len(data) == part.length:
        return data
    chunks = [data]
    received = len(data)
    while received < part.length:
        chunk = os.pread(fd, part.length - received, part.offset + received)
        if not chunk:
            raise StoreError(f"file shrank while uploading: part {part.number} is short")
        chunks.append(chunk)
        received += len(chunk)
    return b"".join(chunks)
