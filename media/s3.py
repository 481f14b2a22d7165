"""Attachments in an S3-compatible bucket, for deployments of several hosts.

Only the calls every S3-compatible store answers alike are used (PutObject,
GetObject, HeadObject, DeleteObject, presigned GET), with path-style addressing
and signature v4, so that AWS S3, Alibaba OSS, Tencent COS and MinIO all work on
a plain endpoint URL. Downloads never pass through this process: a GET is
redirected to a short-lived presigned URL whose query asks the store to answer
with the attachment's Content-Type and Content-Disposition. Uploads stream the
finished temporary file, since attachments may be far larger than we want held
in memory per request.
"""
from __future__ import annotations

import logging
import os
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import ClientError

from media.stores import Served, check_key

log = logging.getLogger(__name__)

#: what a store answers for a key that is not there (GetObject says NoSuchKey, HeadObject only its status)
MISSING = {"NoSuchKey", "404", "NotFound"}


def _config() -> AioConfig:
    options: dict[str, Any] = {"signature_version": "s3v4", "s3": {"addressing_style": "path"}}
    # botocore >= 1.36 adds CRC checksums (and aws-chunked trailers) to every upload by default,
    # which OSS, COS and older MinIO refuse; checksum only where the API requires one.
    if "request_checksum_calculation" in Config.OPTION_DEFAULTS:
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
    return AioConfig(**options)


def _is_missing(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code", "")) in MISSING


class S3MediaStore:
    """One bucket, one client for the store's life; keys are stored as they are (no fan-out needed)."""

    name = "s3"

    def __init__(self, client: Any, stack: AsyncExitStack, endpoint: str, bucket: str,
                 presign_seconds: int) -> None:
        """Use :meth:`open`."""
        self._client = client
        self._stack = stack
        self.endpoint = endpoint
        self.bucket = bucket
        self.presign_seconds = presign_seconds

    @classmethod
    async def open(cls, endpoint: str, bucket: str, region: str = "us-east-1",
                   presign_seconds: int = 90) -> S3MediaStore:
        """A client for ``bucket`` at ``endpoint``; credentials from botocore's default chain
        (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, …)."""
        stack = AsyncExitStack()
        client = await stack.enter_async_context(
            get_session().create_client("s3", endpoint_url=endpoint, region_name=region, config=_config())
        )
        store = cls(client, stack, endpoint, bucket, presign_seconds)
        log.debug("opened %s", store.describe())
        return store

    def describe(self) -> str:
        return f"s3 bucket {self.bucket} at {self.endpoint}"

    async def put(self, key: str, source: Path, content_type: str) -> None:
        check_key(key)
        try:
            with source.open("rb") as body:
                await self._client.put_object(
                    Bucket=self.bucket, Key=key, Body=body, ContentLength=os.fstat(body.fileno()).st_size,
                    ContentType=content_type,
                )
        finally:
            source.unlink(missing_ok=True)

    async def serve(self, key: str, *, content_type: str, content_disposition: str) -> Served:
        check_key(key)
        url = await self._client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket, "Key": key,
                "ResponseContentType": content_type, "ResponseContentDisposition": content_disposition,
            },
            ExpiresIn=self.presign_seconds,
        )
        return Served(url=url)

    async def read(self, key: str) -> bytes:
        check_key(key)
        try:
            response = await self._client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _is_missing(error):
                raise FileNotFoundError(f"no {key} in {self.describe()}") from error
            raise
        async with response["Body"] as stream:
            data: bytes = await stream.read()
        return data

    async def delete(self, key: str) -> None:
        check_key(key)
        try:
            await self._client.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as error:  # S3 answers 204 for a missing key; some compatible stores say 404
            if not _is_missing(error):
                raise

    async def close(self) -> None:
        await self._stack.aclose()
