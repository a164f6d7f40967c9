"""Object storage: S3-compatible (boto3) in production, a local directory when embedded.

Keys are deterministic (`jobs/<id>/<n>.png`, `inputs/<id>/image.<ext>`), so a
rerun overwrites instead of duplicating. Clients get expiring URLs, never keys.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, urlencode, urlparse

from service.core.settings import Settings


class StorageError(Exception):
    """A transient or configuration fault talking to the object store."""


class Storage(ABC):
    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def url(self, key: str, expires_in: int) -> str: ...

    @abstractmethod
    def delete(self, keys: list[str]) -> None:
        """Remove these objects; a key that is already gone is not an error."""

    def put_file(self, key: str, fileobj: BinaryIO, content_type: str) -> None:
        """`put` from a file object, for objects too large to hold in memory at once."""
        self.put(key, fileobj.read(), content_type)

    def iter_chunks(self, key: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """The object's bytes in chunks (KeyError if absent), for streaming large ones."""
        yield self.get(key)

    @abstractmethod
    def ping(self) -> None:
        """Raise StorageError unless the store answers."""


class LocalStorage(Storage):
    """Files under a directory; the API serves them at /files/<key> with a signed expiry."""

    def __init__(self, root: Path, public_url: str, signing_key: bytes) -> None:
        self.root = root
        self.public_url = public_url.rstrip("/")
        self.signing_key = signing_key

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise StorageError(f"key escapes the storage root: {key!r}")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # readers never see a half-written file

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise KeyError(key) from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def put_file(self, key: str, fileobj: BinaryIO, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as out:
            shutil.copyfileobj(fileobj, out)
        os.replace(tmp, path)

    def iter_chunks(self, key: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        try:
            handle = open(self._path(key), "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError as exc:
            raise KeyError(key) from exc
        with handle:
            while chunk := handle.read(chunk_bytes):
                yield chunk

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root.resolve()))
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )

    def delete(self, keys: list[str]) -> None:
        root = self.root.resolve()
        for key in keys:
            path = self._path(key)
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise StorageError(f"delete {key!r}: {exc}") from exc
            # Empty per-job folders would pile up forever: remove them up to the root.
            for parent in path.parents:
                if parent == root or not parent.is_relative_to(root):
                    break
                try:
                    parent.rmdir()
                except OSError:
                    break  # not empty (or already gone): leave it

    def sign(self, key: str, expires: int) -> str:
        msg = f"{key}\n{expires}".encode()
        return hmac.new(self.signing_key, msg, hashlib.sha256).hexdigest()

    def verify(self, key: str, expires: int, signature: str) -> bool:
        # Bytes: compare_digest refuses non-ASCII str (a `sig=%C3%A9` was a 500).
        given = signature.encode("utf-8", "surrogateescape")
        return expires >= time.time() and hmac.compare_digest(
            self.sign(key, expires).encode(), given
        )

    def url(self, key: str, expires_in: int) -> str:
        expires = int(time.time()) + expires_in
        query = urlencode({"expires": expires, "sig": self.sign(key, expires)})
        return f"{self.public_url}/files/{quote(key)}?{query}"

    def ping(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(str(exc)) from exc
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"{self.root} is not writable")


class S3Storage(Storage):
    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        cfg = Config(
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
            signature_version="s3v4",
            s3={"addressing_style": "path"} if endpoint_url else {},
        )
        self.client = boto3.client("s3", endpoint_url=endpoint_url, config=cfg)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, fn, **kwargs):  # type: ignore[no-untyped-def]
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise KeyError(kwargs.get("Key")) from exc
            raise StorageError(f"s3: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"s3: {exc}") from exc

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self._call(self.client.put_object, Key=self._key(key), Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes:
        return self._call(self.client.get_object, Key=self._key(key))["Body"].read()

    def put_file(self, key: str, fileobj: BinaryIO, content_type: str) -> None:
        # upload_fileobj sends large objects in parts, never all in memory.
        self._call_file(fileobj, key, content_type)

    def _call_file(self, fileobj: BinaryIO, key: str, content_type: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.upload_fileobj(fileobj, self.bucket, self._key(key),
                                       ExtraArgs={"ContentType": content_type})
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"s3: {exc}") from exc

    def iter_chunks(self, key: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError

        body = self._call(self.client.get_object, Key=self._key(key))["Body"]
        try:
            yield from body.iter_chunks(chunk_bytes)
        except BotoCoreError as exc:
            raise StorageError(f"s3: {exc}") from exc
        finally:
            body.close()

    def exists(self, key: str) -> bool:
        try:
            self._call(self.client.head_object, Key=self._key(key))
            return True
        except KeyError:
            return False

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        token = None
        strip = len(self.prefix) + 1 if self.prefix else 0
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self._call(self.client.list_objects_v2, Prefix=self._key(prefix), **extra)
            keys += [obj["Key"][strip:] for obj in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return sorted(keys)
            token = page["NextContinuationToken"]

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), _S3_DELETE_MAX):
            chunk = keys[start : start + _S3_DELETE_MAX]
            objects = [{"Key": self._key(key)} for key in chunk]
            answer = self._call(
                self.client.delete_objects, Delete={"Objects": objects, "Quiet": True}
            )
            # DeleteObjects answers 200 even when some keys failed; they are listed here.
            errors = answer.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageError(
                    f"s3: {len(errors)} object(s) not deleted, e.g. {first.get('Key')}: "
                    f"{first.get('Code')} {first.get('Message')}"
                )

    def url(self, key: str, expires_in: int) -> str:
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(key)},
            ExpiresIn=expires_in,
        )

    def ping(self) -> None:
        self._call(self.client.head_bucket)


_S3_DELETE_MAX = 1000  # keys per DeleteObjects request (the S3 API's limit)


def storage_from_settings(settings: Settings) -> Storage:
    parsed = urlparse(settings.storage_url)
    if parsed.scheme == "file":
        return LocalStorage(Path(parsed.path), settings.public_url, settings.signing_key)
    return S3Storage(parsed.netloc, parsed.path, settings.s3_endpoint_url)
