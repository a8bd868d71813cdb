"""Where results live: one folder per job (`video.mp4`, `thumbnail.jpg`) under an fsspec location,
a local folder by default, a shared volume or object storage (`s3://...`) on a cluster. The
jobs deployment writes and deletes; every ingress replica reads. Calls block: use a thread."""

from typing import BinaryIO

import fsspec

VIDEO = "video.mp4"
THUMBNAIL = "thumbnail.jpg"


class ResultStorage:
    def __init__(self, location: str) -> None:
        self._fs, root = fsspec.core.url_to_fs(location)
        self._root = root.rstrip("/")
        self._fs.makedirs(self._root, exist_ok=True)

    def _path(self, job_id: str, name: str = "") -> str:
        return f"{self._root}/{job_id}/{name}".rstrip("/")

    def write(self, job_id: str, files: dict[str, bytes]) -> None:
        self._fs.makedirs(self._path(job_id), exist_ok=True)
        for name, data in files.items():
            with self._fs.open(self._path(job_id, name), "wb") as out:
                out.write(data)

    def size(self, job_id: str, name: str) -> int:
        return self._fs.size(self._path(job_id, name))

    def open(self, job_id: str, name: str) -> BinaryIO:
        return self._fs.open(self._path(job_id, name), "rb")

    def read(self, job_id: str, name: str) -> bytes:
        return self._fs.cat_file(self._path(job_id, name))

    def delete(self, job_id: str) -> None:
        if self._fs.exists(self._path(job_id)):
            self._fs.rm(self._path(job_id), recursive=True)
