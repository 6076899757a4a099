"""S3 and S3-compatible object stores (AWS S3, Alibaba OSS, Volcengine TOS, Tencent COS,
Kingsoft KS3, MinIO) through boto3.

Downloads are parallel ranged GETs pinned to the object's ETag (``If-Match``), so a
replaced object can never be stitched from two versions, and resume after a kill.
Each download is verified against the ETag: for a multipart object the ranges are
aligned to its upload parts, whose MD5s combine into the ETag without a second
pass. Uploads send every part with its Content-MD5 (and SHA-256 where the store
supports flexible checksums) and check the ETag the store returns. Credentials are
prefect-aws ``AwsCredentials`` (SecretStr): never logged, never in an error.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import hashlib
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
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
    Part,
    PartReader,
    TransferSettings,
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
_MULTIPART = re.compile(r"^[0-9a-f]{32}-(\d+)$")
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
        description="Checksum sent with every part besides Content-MD5; none for stores "
        "without S3's flexible checksums.",
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
        return cls(
            scheme=provider,
            endpoint_url=endpoint.format(region=region),
            region_name=region,
            addressing_style="virtual",
            **fields,
        )

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
            self.verify_tls,
        )
        with self._client_lock:
            if self._client is None or self._client_settings != settings:
                config = Config(
                    s3={"addressing_style": self.addressing_style},
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
        head = self._call(uri, self.client.head_object, Bucket=parsed.bucket, Key=parsed.key)
        size, etag = int(head["ContentLength"]), _etag(head)
        settings = self.transfer
        multipart = _MULTIPART.match(etag)
        digest_block: int | None = None
        if multipart and int(multipart.group(1)) > 1:
            # Align ranges to the upload parts: their MD5s combine into the ETag.
            first = self._call(
                uri, self.client.head_object, Bucket=parsed.bucket, Key=parsed.key, PartNumber=1
            )
            digest_block = int(first["ContentLength"])
        parts = plan_parts(size, settings, align=digest_block)
        in_stream_md5 = digest_block is not None or (
            len(parts) == 1 and bool(_PLAIN_MD5.match(etag))
        )

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
            try:
                yield _BodyReader(uri, body)
            finally:
                body.close()

        def verify(path: Path, digests: builtins.list[str]) -> None:
            if digest_block is not None:
                actual = multipart_etag(digests)
            elif _PLAIN_MD5.match(etag):
                actual = digests[0] if in_stream_md5 else file_digest(path, "md5")
            else:
                return  # an ETag that is no MD5 (SSE-KMS): the size check is what is left
            if actual != etag:
                raise IntegrityError(uri, f"ETag {etag} expected, the bytes give {actual}")

        result = download_ranges(
            uri,
            destination,
            size=size,
            version=etag,
            parts=parts,
            stream=stream,
            settings=settings,
            digest="md5" if in_stream_md5 else "crc32",
            block_size=digest_block,
            verify=verify,
        )
        return ObjectInfo(uri, result.size, etag=etag)

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
            response = self._call(
                uri,
                self.client.put_object,
                Bucket=parsed.bucket,
                Key=parsed.key,
                Body=data,
                ContentMD5=base64.b64encode(md5.digest()).decode(),
                **self._checksum_args(data),
            )
            _check_etag(uri, _etag(response), md5.hexdigest())
            return ObjectInfo(uri, size, etag=md5.hexdigest())
        return self._upload_multipart(source, uri, parsed, parts)

    def _upload_multipart(
        self, source: Path, uri: str, parsed: ObjectUri, parts: builtins.list[Part]
    ) -> ObjectInfo:
        created = self._call(
            uri,
            self.client.create_multipart_upload,
            Bucket=parsed.bucket,
            Key=parsed.key,
            **({"ChecksumAlgorithm": "SHA256"} if self.part_checksum == "sha256" else {}),
        )
        upload_id = created["UploadId"]

        def send(part: Part, data: bytes) -> dict[str, Any]:
            md5 = hashlib.md5(data, usedforsecurity=False)
            checksum = self._checksum_args(data)
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
            _check_etag(uri, _etag(response), md5.hexdigest(), f"part {part.number}")
            return {"PartNumber": part.number, "ETag": response["ETag"], "md5": md5, **checksum}

        try:
            sent = upload_parts(uri, source, parts, send, self.transfer)
            expected = multipart_etag([entry.pop("md5").hexdigest() for entry in sent])
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
        try:
            _check_etag(uri, _etag(completed), expected)
        except IntegrityError:
            self.client.delete_object(Bucket=parsed.bucket, Key=parsed.key)
            raise
        return ObjectInfo(uri, source.stat().st_size, etag=expected)

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
    def __init__(self, uri: str, body: Any) -> None:
        self._uri = uri
        self._body = body

    def readinto(self, buffer: memoryview, /) -> int:
        try:
            return int(self._body.readinto(buffer))
        except (BotoCoreError, OSError) as error:
            raise StoreError(f"{self._uri}: connection lost mid-part: {error}") from None


def _etag(response: dict[str, Any]) -> str:
    return str(response.get("ETag", "")).strip('"').lower()


def _check_etag(uri: str, returned: str, expected: str, what: str = "object") -> None:
    # Only an ETag shaped like an MD5 is one: SSE-KMS objects get an opaque ETag.
    if (_PLAIN_MD5.match(returned) or _MULTIPART.match(returned)) and returned != expected:
        raise IntegrityError(uri, f"the store's ETag {returned} of the {what} is not {expected}")
