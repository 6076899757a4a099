"""S3 and S3-compatible object stores (AWS S3, Alibaba OSS, Volcengine TOS, Tencent COS,
Kingsoft KS3, MinIO) through boto3.

Downloads are parallel ranged GETs pinned to the object's ETag (``If-Match``, and the
ETag of every answer compared, for stores that ignore ``If-Match``), so a replaced
object can never be stitched from two versions, and resume after a kill.

Integrity never rests on an ETag being an MD5 of the data: it is not for SSE-KMS and
SSE-C objects, and some stores compute it their own way. A download is verified against
the object's full SHA-256 checksum where the store keeps one (``ChecksumMode=ENABLED``),
else against the CRC-64/NVME that gpuflow's upload recorded in the object's metadata
(taken from the source file, so it checks end to end, at a few per cent of an MD5's
cost), else against the CRC-64/ECMA-182 that OSS, COS and TOS keep of every object (as
cheap, for objects other clients uploaded), else against an ETag that is an MD5 (of the
object, or S3's MD5 of the parts' MD5s with the ranges aligned to the parts), else by
its size alone. An upload is verified by the checksum the store returns, else by the
CRC-64/ECMA-182 that OSS, COS and TOS give of what they kept (each part's on receipt,
then the object's), else by an MD5 ETag (the object's, or S3's MD5 of the parts' MD5s),
else by the parts' own ETags each being the MD5 its part was sent with (what S3's
multipart form vouches for, on stores that compute the object's ETag their own way:
s3rver, OSS, COS), else by reading the object back and hashing it. Only a verified
mismatch deletes what was uploaded; "cannot verify" never does.
Credentials are prefect-aws ``AwsCredentials`` (SecretStr): never logged, never in an
error.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import hashlib
import http.client
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

from awscrt.checksums import crc64nvme
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from fastcrc import crc64
from prefect_aws import AwsCredentials
from pydantic import Field, PrivateAttr, field_validator

from gpuflow.core.errors import (
    GpuflowError,
    IntegrityError,
    ObjectNotFoundError,
    StoreAccessError,
    StoreError,
)
from gpuflow.storage.base import ObjectStore
from gpuflow.storage.transfer import (
    BackgroundDigest,
    DigestName,
    Part,
    PartReader,
    TransferSettings,
    crc64xz_combine,
    download_ranges,
    file_digest,
    multipart_etag,
    plan_parts,
    upload_parts,
)
from gpuflow.storage.uri import ObjectInfo, ObjectUri

# boto3 clients are generated at run time; without boto3-stubs they type as Any.
S3Client = Any

# The S3-compatible stores, by URI scheme: each cloud's public endpoint by region (virtual-
# hosted addressing), or None where endpoint_url says where the store is. A new S3-compatible
# store is one line here.
S3_COMPATIBLE: dict[str, str | None] = {
    "s3": None,
    "minio": None,
    "oss": "https://oss-{region}.aliyuncs.com",
    "tos": "https://tos-s3-{region}.volces.com",
    "cos": "https://cos.{region}.myqcloud.com",
    "ks3": "https://ks3-{region}.ksyuncs.com",
}

_PLAIN_MD5 = re.compile(r"^[0-9a-f]{32}$")
# The user metadata an upload records the whole object's CRC-64/NVME in (base64 of its 8
# big-endian bytes, S3's own form of that checksum): the header x-amz-meta-gpuflow-crc64nvme.
CRC64NVME_METADATA = "gpuflow-crc64nvme"
_MULTIPART = re.compile(r"^[0-9a-f]{32}-(\d+)$")
_DECIMAL = re.compile(r"[0-9]{1,20}")
# Where OSS, COS and TOS give every object's CRC-64/ECMA-182 (CRC-64/XZ: Go's crc64.ECMA),
# in decimal, on HEAD and GET; objects stored before a store kept it have none.
PROVIDER_CRC64_HEADERS = ("x-oss-hash-crc64ecma", "x-cos-hash-crc64ecma", "x-tos-hash-crc64ecma")
# Server-side encryption whose objects get an ETag that is no MD5 of the data (AWS
# documents this for SSE-KMS, DSSE-KMS and SSE-C); SSE-S3 (AES256) keeps MD5 ETags.
_OPAQUE_ETAG_ENCRYPTION = {"aws:kms", "aws:kms:dsse"}
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_DENIED = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AllAccessDisabled",
    "AccountProblem",
    "ExpiredToken",
    "InvalidToken",
}


class S3ObjectStore(ObjectStore):
    """An S3 bucket, or a bucket of an S3-compatible cloud reached through ``endpoint_url``."""

    _block_type_name = "gpuflow s3 object store"
    _block_type_slug = "gpuflow-s3-object-store"
    _description = (
        "S3 or S3-compatible object store (OSS, TOS, COS, KS3, MinIO): parallel, verified, "
        "resumable transfers."
    )
    schemes: ClassVar[tuple[str, ...]] = tuple(S3_COMPATIBLE)

    scheme: str = Field(
        default="s3",
        description="URI scheme this store serves: s3://bucket/key, oss://...",
        json_schema_extra={"enum": list(S3_COMPATIBLE)},
    )
    endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint; unset for AWS S3 itself."
    )
    region_name: str | None = Field(default=None, description="Region, e.g. us-east-1.")
    addressing_style: Literal["auto", "virtual", "path"] = Field(
        default="auto",
        description="virtual (bucket.endpoint) for OSS/TOS/COS/KS3, path for MinIO.",
    )
    credentials: AwsCredentials = Field(
        default_factory=AwsCredentials,
        description="prefect-aws credentials; empty uses the environment, profile or role.",
    )
    part_checksum: Literal["sha256", "none"] = Field(
        default="sha256",
        description="Checksum sent besides Content-MD5 with single PUTs, and with the "
        "parts of a multipart upload where the store names the algorithm back (it keeps "
        "checksums); none for stores that refuse S3's flexible checksums.",
    )
    md5_etags: bool = Field(
        default=True,
        description="The store's ETags of unencrypted objects are S3's MD5s, so a download "
        "whose bytes do not match its ETag is refused; false for stores that compute ETags "
        "their own way (a mismatch then cannot verify, and the size is checked).",
    )
    sign_payloads: bool = Field(
        default=False,
        description="Put the SHA-256 of every request body into its signature, as botocore "
        "does over http: one more pass over every byte uploaded. Off, bodies are sent as "
        "UNSIGNED-PAYLOAD (botocore's own choice over https) and each part is still bound "
        "to the signature by its signed Content-MD5 or checksum header.",
    )
    verify_tls: bool = True
    transfer: TransferSettings = Field(default_factory=TransferSettings)

    _client: S3Client | None = PrivateAttr(default=None)
    _client_settings: tuple[object, ...] = PrivateAttr(default=())
    _client_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @field_validator("scheme")
    @classmethod
    def _known_scheme(cls, scheme: str) -> str:
        if scheme not in S3_COMPATIBLE:
            raise ValueError(f"scheme {scheme!r} is not one of {', '.join(S3_COMPATIBLE)}")
        return scheme

    @classmethod
    def for_provider(cls, provider: str, region: str, **fields: Any) -> S3ObjectStore:
        """A store for one cloud's public endpoint in ``region`` (e.g. oss, cn-hangzhou)."""
        endpoint = S3_COMPATIBLE.get(provider)
        if endpoint is None:
            clouds = [name for name, template in S3_COMPATIBLE.items() if template]
            raise ValueError(f"no public endpoint is known for {provider!r} (known: {clouds})")
        defaults: dict[str, Any] = {
            "scheme": provider,
            "endpoint_url": endpoint.format(region=region),
            "region_name": region,
            "addressing_style": "virtual",
            # OSS and COS document multipart ETags that are no MD5 (docs/storage.md).
            "md5_etags": False,
        }
        return cls(**{**defaults, **fields})

    @classmethod
    def for_scheme(cls, scheme: str) -> S3ObjectStore | None:
        # AWS S3 needs no settings: credentials and region come from the environment.
        return cls() if scheme == "s3" else None

    @property
    def served_schemes(self) -> tuple[str, ...]:
        return (self.scheme,)

    @property
    def client(self) -> S3Client:
        """One thread-safe boto3 client, with a connection per transfer worker."""
        # Keyed on the settings it was made from: a model_copy with other credentials
        # or endpoint must not reuse this one.
        settings = (
            self.endpoint_url,
            self.region_name,
            self.addressing_style,
            self.credentials.model_dump_json(),
            self.credentials.aws_secret_access_key,
            self.transfer.max_concurrency,
            self.sign_payloads,
            self.verify_tls,
        )
        with self._client_lock:
            if self._client is None or self._client_settings != settings:
                config = Config(
                    s3={
                        "addressing_style": self.addressing_style,
                        "payload_signing_enabled": self.sign_payloads,
                    },
                    # Requests are SigV4 already; presigned links would be SigV2 (refused by
                    # regions opened since 2014) without this.
                    signature_version="s3v4",
                    max_pool_connections=self.transfer.max_concurrency * 2,
                    retries={"mode": "standard", "max_attempts": 5},
                    # Checksums are computed here per part; botocore's own default
                    # (CRC32 trailers on every request) is refused by several
                    # S3-compatible stores.
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                )
                session = self.credentials.get_boto3_session()
                self._client = session.client(
                    "s3",
                    endpoint_url=self.endpoint_url,
                    region_name=self.region_name or session.region_name,
                    verify=self.verify_tls,
                    config=config,
                )
                self._client_settings = settings
            return self._client

    def stat(self, uri: str) -> ObjectInfo:
        parsed = self.check_uri(uri)
        head = self._call(uri, self.client.head_object, Bucket=parsed.bucket, Key=parsed.key)
        return ObjectInfo(uri, int(head["ContentLength"]), etag=_etag(head))

    def share_url(self, uri: str, expires_s: int) -> str | None:
        # Signed here, with no request to the store: SigV4 puts the access key id, the
        # expiry and the signature in the query (and a session token for temporary
        # credentials, which the link needs); never the secret key.
        parsed = self.check_uri(uri)
        url: str = self._call(
            uri,
            self.client.generate_presigned_url,
            ClientMethod="get_object",
            Params={"Bucket": parsed.bucket, "Key": parsed.key},
            ExpiresIn=expires_s,
        )
        return url

    def list(self, prefix_uri: str) -> Iterator[ObjectInfo]:
        parsed = self.check_uri(prefix_uri)
        prefix = parsed.key if not parsed.key or parsed.key.endswith("/") else parsed.key + "/"
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=parsed.bucket, Prefix=prefix
        )
        found = False
        try:
            for page in pages:
                for entry in page.get("Contents", []):
                    if entry["Key"].endswith("/"):
                        continue  # a "directory" marker some consoles create
                    found = True
                    yield ObjectInfo(
                        str(ObjectUri(parsed.scheme, parsed.bucket, entry["Key"])),
                        int(entry["Size"]),
                        etag=entry["ETag"].strip('"'),
                    )
        except (ClientError, BotoCoreError) as error:
            raise self._error(prefix_uri, error) from None
        if not found:
            raise ObjectNotFoundError(prefix_uri, "no objects under this prefix")

    def download(self, uri: str, destination: Path) -> ObjectInfo:
        parsed = self.check_uri(uri)
        head = self._call(
            uri,
            self.client.head_object,
            Bucket=parsed.bucket,
            Key=parsed.key,
            ChecksumMode="ENABLED",
        )
        size, etag = int(head["ContentLength"]), _etag(head)
        settings = self.transfer
        whole_check = _whole_object_check(head, etag)
        etag_is_md5 = whole_check is None and _etag_may_be_md5(head)
        multipart = _MULTIPART.match(etag) if etag_is_md5 else None
        digest_block: int | None = None
        if multipart and int(multipart.group(1)) > 1:
            digest_block = self._upload_part_size(uri, parsed, size, int(multipart.group(1)))
        plain_md5 = etag_is_md5 and bool(_PLAIN_MD5.match(etag))
        parts = plan_parts(size, settings, align=digest_block)
        in_stream_md5 = digest_block is not None or (len(parts) == 1 and plain_md5)

        @contextlib.contextmanager
        def stream(part: Part, whole: bool) -> Iterator[PartReader]:
            extra = {} if whole else {"Range": f"bytes={part.offset}-{part.end}"}
            response = self._call(
                uri,
                self.client.get_object,
                Bucket=parsed.bucket,
                Key=parsed.key,
                IfMatch=f'"{etag}"',
                **extra,
            )
            body = response["Body"]
            answered = _etag(response)
            if answered != etag:
                # Stores that ignore If-Match (s3rver) still name the version they send.
                body.close()
                raise IntegrityError(
                    uri, f"the object changed during the transfer (ETag {etag}, now {answered})"
                )
            try:
                yield _BodyReader(uri, body)
            finally:
                body.close()

        # The whole object's digest, where one is needed, is taken while it downloads.
        whole_digest: DigestName | None = whole_check.digest if whole_check else None
        if whole_digest is None and plain_md5 and not in_stream_md5:
            whole_digest = "md5"
        # Each part's, for the resume journal: the MD5s an S3-form ETag is checked by, the
        # CRC-64 the whole object's combines from, else the cheapest.
        part_digest: DigestName = (
            "md5" if in_stream_md5 else "crc64xz" if whole_digest == "crc64xz" else "crc64nvme"
        )

        def verify(path: Path, digests: builtins.list[str], whole: str | None) -> None:
            if whole_check:
                actual = whole_check.render(str(whole))
                if actual != whole_check.expected:
                    raise IntegrityError(
                        uri, f"{whole_check.named} expected, the bytes give {actual}"
                    )
                return
            if digest_block is not None:
                actual = multipart_etag(digests)
            elif plain_md5:
                actual = digests[0] if in_stream_md5 else str(whole)
            else:
                # No checksum and an ETag that is no MD5 (SSE-KMS, or parts of unknown
                # sizes): the size and the ETag of every answer are what is left.
                return
            # Only a store whose ETags are MD5s makes a mismatch a wrong download.
            if actual != etag and self.md5_etags:
                raise IntegrityError(uri, f"ETag {etag} expected, the bytes give {actual}")

        result = download_ranges(
            uri,
            destination,
            size=size,
            version=etag,
            parts=parts,
            stream=stream,
            settings=settings,
            digest=part_digest,
            block_size=digest_block,
            whole_digest=whole_digest,
            verify=verify,
        )
        return ObjectInfo(uri, result.size, etag=etag, bytes_moved=result.bytes_fetched)

    def upload(self, source: Path, uri: str) -> ObjectInfo:
        parsed = self.check_uri(uri)
        try:
            size = source.stat().st_size
        except OSError as error:
            raise StoreError(f"cannot upload {source} to {uri}: {error}") from None
        parts = plan_parts(size, self.transfer)
        if len(parts) == 1:
            data = source.read_bytes()
            md5 = hashlib.md5(data, usedforsecurity=False)
            checksum = self._checksum_args(data)
            response = self._call(
                uri,
                self.client.put_object,
                Bucket=parsed.bucket,
                Key=parsed.key,
                Body=data,
                Metadata={CRC64NVME_METADATA: _crc64nvme_base64(data)},
                ContentMD5=base64.b64encode(md5.digest()).decode(),
                # Named as well as sent, so that the store keeps it for later reads.
                **({"ChecksumAlgorithm": "SHA256", **checksum} if checksum else {}),
            )
            self._verify_upload(
                uri,
                parsed,
                response,
                expected_etag=md5.hexdigest(),
                expected_checksum=checksum.get("ChecksumSHA256"),
                source_md5=md5.hexdigest(),
                # Taken only where the store answers with its own CRC of what it kept.
                expected_crc64xz=crc64.xz(data) if _provider_crc64(response) else None,
            )
            return ObjectInfo(uri, size, etag=_etag(response), bytes_moved=size)
        return self._upload_multipart(source, uri, parsed, parts)

    def _upload_multipart(
        self, source: Path, uri: str, parsed: ObjectUri, parts: builtins.list[Part]
    ) -> ObjectInfo:
        # Recorded before the first part: metadata is fixed when the upload is created. One
        # more read of the file (from the page cache, at several GB/s) buys every later
        # download a check of the bytes that costs a few per cent of an MD5's.
        recorded_crc = _base64_of_hex(file_digest(source, "crc64nvme"))
        created = self._call(
            uri,
            self.client.create_multipart_upload,
            Bucket=parsed.bucket,
            Key=parsed.key,
            Metadata={CRC64NVME_METADATA: recorded_crc},
            **({"ChecksumAlgorithm": "SHA256"} if self.part_checksum == "sha256" else {}),
        )
        upload_id = created["UploadId"]
        # A store that keeps checksums names the algorithm back (AWS, MinIO, moto). One
        # that does not is verified by the CRC-64 it answers with (OSS, COS), else by the
        # MD5s of the parts (S3's ETag form, or each part's own ETag), else by a read-back,
        # so for those the parts carry no SHA-256 that nothing checks.
        keeps_checksums = bool(self.part_checksum == "sha256" and created.get("ChecksumAlgorithm"))

        def send(part: Part, data: bytes) -> dict[str, Any]:
            md5 = hashlib.md5(data, usedforsecurity=False)
            checksum = self._checksum_args(data) if keeps_checksums else {}
            response = self._call(
                uri,
                self.client.upload_part,
                Bucket=parsed.bucket,
                Key=parsed.key,
                UploadId=upload_id,
                PartNumber=part.number,
                Body=data,
                ContentMD5=base64.b64encode(md5.digest()).decode(),
                **checksum,
            )
            # The store checks each part's Content-MD5 on receipt (BadDigest); its part
            # ETags need not be MD5s, so the whole object is verified once complete. A
            # store that gives its CRC of the part kept (OSS, COS) is checked at once: a
            # part kept wrong is sent again.
            part_crc: int | None = None
            if kept := _provider_crc64(response):
                part_crc = crc64.xz(data)
                if part_crc != kept.value:
                    raise IntegrityError(
                        uri,
                        f"the store's {kept.named} of part {part.number} is not {part_crc}, "
                        "that of the bytes sent",
                    )
            return {
                "PartNumber": part.number,
                "ETag": response["ETag"],
                "md5": md5,
                "crc64xz": part_crc,
                **checksum,
            }

        try:
            sent = upload_parts(uri, source, parts, send, self.transfer)
            part_md5s = [entry.pop("md5").hexdigest() for entry in sent]
            part_crcs: builtins.list[int | None] = [entry.pop("crc64xz") for entry in sent]
            expected = multipart_etag(part_md5s)
            parts_confirmed = all(
                _etag(entry) == md5 for entry, md5 in zip(sent, part_md5s, strict=True)
            )
            composite = (
                _composite_sha256([entry["ChecksumSHA256"] for entry in sent])
                if keeps_checksums
                else None
            )
            completed = self._call(
                uri,
                self.client.complete_multipart_upload,
                Bucket=parsed.bucket,
                Key=parsed.key,
                UploadId=upload_id,
                MultipartUpload={"Parts": sent},
            )
        except BaseException:
            # The original failure matters more; a lifecycle rule reaps what abort misses.
            with contextlib.suppress(ClientError, BotoCoreError):
                self.client.abort_multipart_upload(
                    Bucket=parsed.bucket, Key=parsed.key, UploadId=upload_id
                )
            raise
        self._verify_upload(
            uri,
            parsed,
            completed,
            expected_etag=expected,
            expected_checksum=composite,
            source_path=source,
            confirmed_size=sum(part.length for part in parts) if parts_confirmed else None,
            expected_crc64xz=_combined_crc64xz(parts, part_crcs),
        )
        size = source.stat().st_size
        return ObjectInfo(uri, size, etag=_etag(completed), bytes_moved=size)

    def _verify_upload(
        self,
        uri: str,
        parsed: ObjectUri,
        response: dict[str, Any],
        expected_etag: str,
        expected_checksum: str | None,
        source_md5: str | None = None,
        source_path: Path | None = None,
        confirmed_size: int | None = None,
        expected_crc64xz: int | None = None,
    ) -> None:
        """Accept the uploaded object, or delete it only when its bytes are shown wrong.

        A read-back is compared with ``source_md5``, else with the MD5 of ``source_path``
        (taken only then). ``confirmed_size`` is the bytes sent, set where every part's
        ETag was the MD5 the part was sent with: each part arrived intact.
        ``expected_crc64xz`` is the uploaded bytes' CRC-64/ECMA-182, for a store that
        answers with its own of what it kept (OSS, COS, TOS).
        """
        returned_checksum = response.get("ChecksumSHA256")
        if expected_checksum and returned_checksum:
            if returned_checksum != expected_checksum:
                self._delete_wrong(
                    uri,
                    parsed,
                    f"the store's SHA-256 checksum {returned_checksum} of the object is not "
                    f"{expected_checksum}",
                )
            return
        kept = _provider_crc64(response)
        if kept is not None and expected_crc64xz is not None:
            if kept.value != expected_crc64xz:
                self._delete_wrong(
                    uri,
                    parsed,
                    f"the store's {kept.named} of the object is not {expected_crc64xz}, "
                    "that of the file",
                )
            return
        etag = _etag(response)
        etag_may_be_md5 = _etag_may_be_md5(response)
        if etag_may_be_md5 and etag == expected_etag:
            return
        # S3's own form that does not match says the store assembled other parts: that is
        # for the bytes to settle, not the parts' ETags.
        s3_form_mismatch = self.md5_etags and etag_may_be_md5 and bool(_MULTIPART.match(etag))
        if (
            confirmed_size is not None
            and not s3_form_mismatch
            and self._stored_size(uri, parsed, etag) == confirmed_size
        ):
            # The object's ETag is of the store's own making (s3rver's plain MD5 of a
            # multipart object, OSS, COS) and each part's is the MD5 it was sent with: every
            # part arrived intact and the object has their size. Unlike S3's form this does
            # not show the parts were joined in the order listed; the plain MD5 that would
            # costs a second MD5 over the whole file. A wrong assembly is still refused at
            # the first download, by the recorded CRC-64/NVME.
            return
        # The ETags say nothing checkable (SSE-KMS, a store's own scheme): the bytes do,
        # the file's MD5 taken while the object is read back.
        local_md5 = (
            BackgroundDigest(source_path, "md5")
            if source_md5 is None and source_path is not None
            else None
        )
        try:
            stored = self._read_back_md5(uri, parsed, etag)
        except BaseException:
            if local_md5 is not None:
                local_md5.stop()
            raise
        local = local_md5.result() if local_md5 is not None else str(source_md5)
        if stored != local:
            self._delete_wrong(
                uri, parsed, f"the object read back has MD5 {stored}, the file {local}"
            )

    def _stored_size(self, uri: str, parsed: ObjectUri, etag: str) -> int | None:
        """The size of the object under ``etag``; None where another writer replaced it."""
        head = self._call(uri, self.client.head_object, Bucket=parsed.bucket, Key=parsed.key)
        return int(head["ContentLength"]) if _etag(head) == etag else None

    def _read_back_md5(self, uri: str, parsed: ObjectUri, etag: str) -> str:
        response = self._call(
            uri,
            self.client.get_object,
            Bucket=parsed.bucket,
            Key=parsed.key,
            IfMatch=f'"{etag}"',
        )
        digest = hashlib.md5(usedforsecurity=False)
        body = response["Body"]
        if _etag(response) != etag:
            # Another writer replaced it (on a store that ignores If-Match): not ours to delete.
            body.close()
            raise IntegrityError(uri, "the object changed while it was being verified")
        try:
            for chunk in body.iter_chunks(8 * 1024 * 1024):
                digest.update(chunk)
        except (BotoCoreError, OSError) as error:
            raise StoreError(f"{uri}: connection lost reading the upload back: {error}") from None
        finally:
            body.close()
        return digest.hexdigest()

    def _delete_wrong(self, uri: str, parsed: ObjectUri, reason: str) -> None:
        # Verified wrong, not merely unverifiable: a corrupt object must not stay.
        self._call(uri, self.client.delete_object, Bucket=parsed.bucket, Key=parsed.key)
        raise IntegrityError(uri, reason)

    def _upload_part_size(
        self, uri: str, parsed: ObjectUri, size: int, part_count: int
    ) -> int | None:
        """Size of the object's upload parts when they combine into its ETag, else None."""
        first = self._call(
            uri, self.client.head_object, Bucket=parsed.bucket, Key=parsed.key, PartNumber=1
        )
        part_size = int(first["ContentLength"])
        # A store that ignores partNumber answers the whole object; parts of uneven
        # sizes cannot be aligned to either.
        if part_size <= 0 or part_size >= size or -(-size // part_size) != part_count:
            return None
        return part_size

    def _checksum_args(self, data: bytes) -> dict[str, str]:
        if self.part_checksum == "none":
            return {}
        return {"ChecksumSHA256": base64.b64encode(hashlib.sha256(data).digest()).decode()}

    def _call(self, uri: str, operation: Any, **arguments: Any) -> Any:
        try:
            return operation(**arguments)
        except (ClientError, BotoCoreError) as error:
            raise self._error(uri, error) from None

    def _error(self, uri: str, error: ClientError | BotoCoreError) -> GpuflowError:
        """A gpuflow error naming the URI; never the credentials."""
        if isinstance(error, NoCredentialsError):
            return StoreAccessError(uri, "no credentials: set them on the store block")
        if not isinstance(error, ClientError):
            where = self.endpoint_url or "AWS S3"
            return StoreError(f"{uri}: cannot reach {where}: {type(error).__name__}")
        details = error.response.get("Error", {})
        code = str(details.get("Code", ""))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        bucket = ObjectUri.parse(uri).bucket
        if code == "NoSuchBucket" or (code in _NOT_FOUND and not self._bucket_exists(bucket)):
            return ObjectNotFoundError(uri, f"bucket {bucket!r} does not exist")
        if code in _NOT_FOUND:
            return ObjectNotFoundError(uri)
        if code in _DENIED:
            return StoreAccessError(
                uri, f"access denied ({code}): check the store block's credentials and policy"
            )
        if code in ("PreconditionFailed", "412"):
            return IntegrityError(uri, "the object changed during the transfer")
        if code in ("InvalidDigest", "BadDigest", "XAmzContentSHA256Mismatch"):
            return IntegrityError(uri, f"the store rejected a part's checksum ({code})")
        message = details.get("Message", "")
        return StoreError(f"{uri}: the store answered {code or status}: {message}".rstrip(": "))

    def _bucket_exists(self, bucket: str) -> bool:
        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            return code not in ("404", "NoSuchBucket", "NotFound")
        except BotoCoreError:
            return True  # cannot tell: report the object as missing, not the bucket
        return True


class _BodyReader:
    """A response body read into the caller's buffer straight from the socket.

    botocore's body wraps urllib3's response, whose ``readinto`` reads into a new bytes
    object and copies it (two more copies of every byte); the ``http.client`` response
    beneath fills the buffer itself. botocore asks urllib3 not to decode the content, so
    both give the same bytes; where the layers are not what they were, the body's own
    ``readinto`` serves.
    """

    def __init__(self, uri: str, body: Any) -> None:
        self._uri = uri
        socket_level = getattr(getattr(body, "_raw_stream", None), "_fp", None)
        self._readinto = (
            socket_level.readinto
            if isinstance(socket_level, http.client.HTTPResponse)
            else body.readinto
        )

    def readinto(self, buffer: memoryview, /) -> int:
        try:
            return int(self._readinto(buffer))
        except (BotoCoreError, http.client.HTTPException, OSError) as error:
            raise StoreError(f"{self._uri}: connection lost mid-part: {error!r}") from None


def _etag(response: dict[str, Any]) -> str:
    return str(response.get("ETag", "")).strip('"').lower()


def _etag_may_be_md5(response: dict[str, Any]) -> bool:
    """False where the answer shows encryption whose ETags are no MD5 of the data."""
    encryption = str(response.get("ServerSideEncryption") or "").lower()
    return encryption not in _OPAQUE_ETAG_ENCRYPTION and not response.get("SSECustomerAlgorithm")


class _WholeCheck(NamedTuple):
    """A digest of the whole object the download is checked by, and how to name it."""

    digest: DigestName
    expected: str  # as the store or the upload gave it
    named: str  # in an error
    render: Callable[[str], str]  # a hex digest in the form of ``expected``


def _whole_object_check(head: dict[str, Any], etag: str) -> _WholeCheck | None:
    """The best check of the whole object's bytes its HEAD answer offers: the store's own
    full-object SHA-256, the CRC-64/NVME gpuflow's upload recorded from the source file,
    the CRC-64/ECMA-182 that OSS, COS and TOS keep of every object; None leaves the ETag."""
    if sha256 := _full_object_sha256(head, etag):
        return _WholeCheck("sha256", sha256, f"SHA-256 checksum {sha256}", _base64_of_hex)
    if recorded := _recorded_crc64nvme(head):
        named = f"CRC-64/NVME {recorded} recorded at upload"
        return _WholeCheck("crc64nvme", recorded, named, _base64_of_hex)
    if kept := _provider_crc64(head):
        named = f"the store's {kept.named}"
        return _WholeCheck("crc64xz", str(kept.value), named, _decimal_of_hex)
    return None


class _ProviderCrc(NamedTuple):
    value: int
    named: str  # "CRC-64/ECMA-182 <value> (<header>)"


def _provider_crc64(response: dict[str, Any]) -> _ProviderCrc | None:
    """The CRC-64/ECMA-182 of the object or part an answer is about, where the store gives one."""
    headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    for header in PROVIDER_CRC64_HEADERS:
        kept = str(headers.get(header) or "")
        if _DECIMAL.fullmatch(kept) and int(kept) < 1 << 64:
            return _ProviderCrc(int(kept), f"CRC-64/ECMA-182 {kept} ({header})")
    return None


def _combined_crc64xz(
    parts: builtins.list[Part], part_crcs: builtins.list[int | None]
) -> int | None:
    """The whole object's CRC-64/ECMA-182 from its parts', where every part has one."""
    known = [crc for crc in part_crcs if crc is not None]
    return crc64xz_combine.of_parts(parts, known) if len(known) == len(parts) else None


def _decimal_of_hex(hex_digest: str) -> str:
    return str(int(hex_digest, 16))


def _full_object_sha256(head: dict[str, Any], etag: str) -> str:
    """The object's SHA-256 (base64) where the store vouches it covers the whole object.

    A composite checksum (``<base64>-<parts>``, ChecksumType COMPOSITE) needs the part
    boundaries. A checksum with no type is trusted only on a single-part object: moto
    5.2 answers a multipart object with a bare checksum that is no SHA-256 of it.
    """
    checksum = str(head.get("ChecksumSHA256") or "")
    kind = head.get("ChecksumType")
    if not checksum or "-" in checksum:
        return ""
    if kind == "FULL_OBJECT" or (kind is None and not _MULTIPART.match(etag)):
        return checksum
    return ""


def _recorded_crc64nvme(head: dict[str, Any]) -> str:
    """The CRC-64/NVME an upload recorded in the object's metadata; "" where there is none,
    or where the value cannot be one (8 bytes in base64), so the ETag decides instead."""
    recorded = str((head.get("Metadata") or {}).get(CRC64NVME_METADATA) or "")
    try:
        valid = len(base64.b64decode(recorded, validate=True)) == 8
    except ValueError:
        valid = False
    return recorded if valid else ""


def _crc64nvme_base64(data: bytes) -> str:
    return base64.b64encode(crc64nvme(data).to_bytes(8, "big")).decode()


def _base64_of_hex(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def _composite_sha256(part_checksums: builtins.list[str]) -> str:
    """S3's composite checksum of a multipart object: SHA-256 of the parts' binary
    SHA-256s, base64, then ``-<count>``."""
    joined = b"".join(base64.b64decode(checksum) for checksum in part_checksums)
    return f"{base64.b64encode(hashlib.sha256(joined).digest()).decode()}-{len(part_checksums)}"
