"""Where results live: one folder per job (`video.mp4`, `thumbnail.jpg`, and while it waits, its
`reference.png`) under an fsspec location, a local folder by default, a shared volume or object
storage (`s3://...`) on a cluster. The Jobs deployment writes and deletes; every Ingress replica
reads. Calls block: use a thread."""

import secrets
from typing import BinaryIO

import fsspec

VIDEO = "video.mp4"
THUMBNAIL = "thumbnail.jpg"
REFERENCE = "reference.png"  # a text+image job's first frame, kept until the job starts


class ResultStorage:
    def __init__(self, location: str) -> None:
        self._fs, root = fsspec.core.url_to_fs(location)
        self._root = root.rstrip("/")
        self._fs.makedirs(self._root, exist_ok=True)

    def _path(self, job_id: str, name: str = "") -> str:
        return f"{self._root}/{job_id}/{name}".rstrip("/")

    def write(self, job_id: str, files: dict[str, bytes]) -> None:
        """Each file whole under its name: written under a temporary name, then renamed (on object
        storage a put is whole already), so a reader never sees part of one."""
        self._fs.makedirs(self._path(job_id), exist_ok=True)
        for name, data in files.items():
            partial = self._path(job_id, f".{name}.{secrets.token_hex(4)}.partial")
            with self._fs.open(partial, "wb") as out:
                out.write(data)
            self._fs.mv(partial, self._path(job_id, name))

    def exists(self, job_id: str, name: str) -> bool:
        return bool(self._fs.exists(self._path(job_id, name)))

    def size(self, job_id: str, name: str) -> int:
        return int(self._fs.size(self._path(job_id, name)))

    def open(self, job_id: str, name: str) -> BinaryIO:
        stream: BinaryIO = self._fs.open(self._path(job_id, name), "rb")
        return stream

    def read(self, job_id: str, name: str) -> bytes:
        data: bytes = self._fs.cat_file(self._path(job_id, name))
        return data

    def delete_file(self, job_id: str, name: str) -> None:
        if self._fs.exists(self._path(job_id, name)):
            self._fs.rm(self._path(job_id, name))

    def delete(self, job_id: str) -> None:
        if self._fs.exists(self._path(job_id)):
            self._fs.rm(self._path(job_id), recursive=True)
