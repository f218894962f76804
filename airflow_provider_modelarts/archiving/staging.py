"""Staged (atomic) writes into an ``ObjectStoragePath``: nothing appears at the final path until commit.

* S3-compatible stores (``s3://``, ``obs://``): an uncommitted multipart upload.
* Local disk: a hidden, locked temporary sibling renamed over the final name.
* Other file systems: a hidden temporary sibling moved over the final name.

Every failure of the destination is raised as :class:`ModelArtsArchiveDestinationError` naming the path.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import posixpath
import re
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from airflow_provider_modelarts.archiving.multipart import MultipartWriter, destination_error
from airflow_provider_modelarts.exceptions import (
    ModelArtsArchiveDestinationError,
    ModelArtsArchiveStoppedError,
)

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import ObjectStoragePath

__all__ = [
    "DIRECT_IO_ALIGN",
    "LOCAL_WRITE_SLICE",
    "NAME_MAX",
    "STAGING_NAME_OVERHEAD",
    "StagedObject",
    "fmt_bytes",
    "write_bytes_atomically",
]

log = logging.getLogger(__name__)

LOCAL_WRITE_SLICE = 16 * 1024
# Direct I/O (``O_DIRECT``) wants buffer address, file offset and length aligned to the device's logical
# block size; 4 KiB covers the usual 512 B and 4 KiB devices.
DIRECT_IO_ALIGN = 4096
_O_DIRECT = getattr(os, "O_DIRECT", 0)
# Longest file name (bytes) on the usual file systems (ext4, XFS, Btrfs, NFS, tmpfs) and object stores'
# key segments as mounted locally.
NAME_MAX = 255
_STAGING_TOKEN_HEX = 12
# ".{name}.{token}.partial"
STAGING_NAME_OVERHEAD = len("..") + _STAGING_TOKEN_HEX + len(".partial")


def fmt_bytes(n: float) -> str:
    """``n`` bytes in B, KiB, MiB or GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _is_s3(fs: Any) -> bool:
    try:
        from s3fs import S3FileSystem
    except ImportError:
        return False
    return isinstance(fs, S3FileSystem)


def _staging_name(name: str) -> str:
    return f".{name}.{uuid.uuid4().hex[:_STAGING_TOKEN_HEX]}.partial"


def _remove_stale_staging(parent: str, name: str) -> None:
    """Delete staging files of ``name`` in local directory ``parent`` whose writer is gone.

    A live writer holds an exclusive ``flock`` on its staging file for as long as it writes; the kernel
    drops the lock when the writer's process dies (even on SIGKILL). So a staging file whose lock can be
    taken was left behind by an interrupted run and is removed; one that is locked is another copy in
    progress and is left alone.
    """
    prefix = f".{name}."
    pattern = re.compile(rf"\.{re.escape(name)}\.[0-9a-f]{{{_STAGING_TOKEN_HEX}}}\.partial")
    try:
        entries = os.listdir(parent)
    except OSError:
        return
    for entry in entries:
        # One listing per copy; the prefix test keeps a folder of thousands of logs cheap to scan.
        if not entry.startswith(prefix) or not pattern.fullmatch(entry):
            continue
        path = os.path.join(parent, entry)
        try:
            # Opened for writing: on NFS, flock is emulated with POSIX locks, which need it for LOCK_EX.
            fd = os.open(path, os.O_WRONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                continue
            size = os.fstat(fd).st_size
            os.unlink(path)
            log.info("Removed %s (%s) left by an interrupted copy", path, fmt_bytes(size))
        except OSError:
            continue  # locked by a live writer, or already gone
        finally:
            os.close(fd)


# Local block-device file systems on which direct writes are well-behaved and fast: ext2/3/4, XFS,
# Btrfs. Elsewhere (NFS and EFS, SMB, FUSE, tmpfs, ...) a direct write can be a synchronous round trip to
# a server, or refused, so the page cache is used there.
_DIRECT_IO_FS_TYPES = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs"})
_MOUNTINFO = "/proc/self/mountinfo"


def _unescape_mount_path(field: str) -> str:
    """Decode the octal escapes (``\\040`` for a space...) of a mountinfo path field."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _fs_type(path: str) -> str | None:
    """Type (``ext4``, ``nfs4``, ``tmpfs``...) of the file system holding ``path`` (Linux), else None.

    Read from ``/proc/self/mountinfo``: the mount point that is the longest prefix of the real path.
    """
    try:
        real = os.path.realpath(path)
        with open(_MOUNTINFO, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    best, best_type = "", None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right:
            continue
        mount = _unescape_mount_path(fields[4])
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, best_type = mount, right.split()[0]
    return best_type


def _direct_io_suits(parent: str) -> bool:
    """Whether staging files in local directory ``parent`` should be written with direct I/O."""
    return bool(_O_DIRECT) and _fs_type(parent) in _DIRECT_IO_FS_TYPES


def _open_direct(path: str, flags: int) -> int:
    """``opener`` for :func:`open`: ask for direct I/O, or plain I/O where the file system refuses it."""
    try:
        return os.open(path, flags | _O_DIRECT, 0o666)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    return os.open(path, flags, 0o666)


def _open_locked_staging(parent: str, name: str, *, direct: bool = False) -> tuple[str, Any]:
    """Create and ``flock`` a new staging file for ``name`` in ``parent``; return its path and file."""
    while True:
        path = os.path.join(parent, _staging_name(name))
        # Unbuffered: every write goes straight to the file descriptor (one C call, GIL released).
        fh = open(path, "xb", buffering=0, opener=_open_direct if direct else None)  # noqa: SIM115
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            # A cleaner may have taken the lock between create and flock and removed the file.
            if os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino:
                return path, fh
        except FileNotFoundError:
            pass
        except BaseException:
            fh.close()
            raise
        fh.close()


class StagedObject:
    """A write that becomes visible at its final path only on :meth:`commit`.

    * S3-compatible stores (``s3://``, ``obs://``): an uncommitted multipart upload whose parts are sent
      by background threads while the next bytes are written
      (:class:`~airflow_provider_modelarts.archiving.multipart.MultipartWriter`); :meth:`commit`
      completes it (an object under one part is sent by one ``PutObject`` at commit), :meth:`discard`
      aborts it.
    * Local disk: a hidden temporary sibling ``.{name}.{token}.partial``, locked (``flock``) while it is
      written and renamed over the final name on :meth:`commit`. Staging files of the same name that no
      live writer holds (left by a killed run) are removed first. On ext4, XFS and Btrfs, block-aligned
      writes bypass the page cache (``O_DIRECT``); the first write that is not aligned (the tail, or
      the data after a short read) and everything after it goes through the page cache, as do all
      writes on other file systems (network and FUSE mounts, tmpfs).
    * Other filesystems: a hidden temporary sibling, moved over the final name on :meth:`commit` and
      deleted on :meth:`discard`.

    :param target: final location.
    :param check_stop: called while a write waits for an upload slot (object stores); raises to stop.
    :param expected_size: bytes expected to be written, if known (a hint: object stores start a
        multipart upload at once when it is more than one part).
    """

    def __init__(
        self,
        target: ObjectStoragePath,
        *,
        check_stop: Callable[[], None] | None = None,
        expected_size: int | None = None,
    ) -> None:
        self.target = target
        self._check_stop = check_stop
        self._mpu: MultipartWriter | None = None
        self._fs = target.fs
        self._final = target.path
        self._tmp: str | None = None
        self._local = False
        self._direct = False
        self._offset = 0
        self._done = False
        try:
            self._open(expected_size)
        except OSError as e:
            raise ModelArtsArchiveDestinationError.at(str(target), "could not start writing", e) from None

    def _open(self, expected_size: int | None) -> None:
        parent, name = posixpath.split(self._final)
        if _is_s3(self._fs):
            self._mpu = MultipartWriter(
                self._fs, self._final, check_stop=self._check_stop, expected_size=expected_size
            )
        elif _is_local(self._fs):
            self._local = True
            os.makedirs(parent, exist_ok=True)
            _remove_stale_staging(parent, name)
            self._tmp, self._fh = _open_locked_staging(parent, name, direct=_direct_io_suits(parent))
            self._direct = bool(_O_DIRECT and fcntl.fcntl(self._fh.fileno(), fcntl.F_GETFL) & _O_DIRECT)
        else:
            self._tmp = posixpath.join(parent, _staging_name(name))
            self._fh = self._fs.open(self._tmp, "wb")

    @property
    def is_local(self) -> bool:
        """Whether writes go to a local file (cheap to hand to a writer thread, in order)."""
        return self._local

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data``.

        :raises ModelArtsArchiveDestinationError: the destination refused the data (full, read-only...).
        """
        if self._mpu is not None:
            try:
                self._mpu.write(data)
            except ModelArtsArchiveStoppedError:
                raise
            except Exception as e:
                raise destination_error(str(self.target), "could not write", e) from None
            return
        try:
            self._write(data)
        except OSError as e:
            raise ModelArtsArchiveDestinationError.at(str(self.target), "could not write", e) from None

    def seal(self) -> None:
        """Send what was written and wait until the store holds all of it (object stores); else nothing.

        Called before :meth:`commit`, outside the stop lock, so the commit itself is one short request.

        :raises ModelArtsArchiveDestinationError: a part was refused, or the parts miss bytes.
        """
        if self._mpu is None:
            return
        try:
            self._mpu.seal()
        except ModelArtsArchiveStoppedError:
            raise
        except Exception as e:
            raise destination_error(str(self.target), "could not write", e) from None

    def _write(self, data: bytes | memoryview) -> None:
        if not self._local:
            self._fh.write(data)
            return
        view = memoryview(data).cast("B")
        end = len(view)
        done = self._write_direct(view) if self._direct else 0
        # Through the page cache, local files take the data in LOCAL_WRITE_SLICE slices through an
        # unbuffered file, which costs less kernel CPU than large writes (see docs/benchmarks.md).
        write = self._fh.write
        while done < end:
            done += write(view[done : done + LOCAL_WRITE_SLICE])
        self._offset += end

    def _write_direct(self, view: memoryview) -> int:
        """Write what can go around the page cache; return the bytes written (the rest is up to the caller).

        Direct I/O stops for good at the first misaligned offset or length, or when the kernel refuses
        the buffer (``EINVAL``: an unaligned address, or a file system without direct writes).
        """
        end = len(view)
        done = 0
        if self._offset % DIRECT_IO_ALIGN == 0 and end % DIRECT_IO_ALIGN == 0:
            try:
                while done < end:
                    n = self._fh.write(view[done:])
                    done += n
                    if n % DIRECT_IO_ALIGN:
                        break
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
        if done < end:
            fd = self._fh.fileno()
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_O_DIRECT)
            self._direct = False
        return done

    def commit(self) -> None:
        """Make the object visible at its final path.

        A local staging file is renamed while its writer still holds the lock, so a concurrent run never
        takes it for the leftover of a killed one.

        :raises ModelArtsArchiveDestinationError: the destination refused it.
        """
        if self._mpu is not None:
            self._commit_upload()
            return
        assert self._tmp is not None
        try:
            if self._local:
                os.replace(self._tmp, self._final)
                self._fh.close()
            else:
                self._fh.close()
                self._fs.mv(self._tmp, self._final)
        except OSError as e:
            self.discard()
            raise ModelArtsArchiveDestinationError.at(str(self.target), "could not commit", e) from None
        self._done = True

    def _commit_upload(self) -> None:
        assert self._mpu is not None
        try:
            self._mpu.seal()
            self._mpu.commit()
        except BaseException as e:
            self.discard()
            if not isinstance(e, Exception) or isinstance(e, ModelArtsArchiveStoppedError):
                raise
            raise destination_error(str(self.target), "could not commit", e) from None
        self._done = True

    def discard(self) -> None:
        """Throw the staged data away; nothing appears at the final path. Never raises."""
        if self._done:
            return
        self._done = True
        if self._mpu is not None:
            self._mpu.discard()
            return
        assert self._tmp is not None
        try:
            if self._local:
                self._fh.close()
                os.unlink(self._tmp)
            else:
                self._fh.close()
                self._fs.rm(self._tmp)
        except Exception:
            log.warning("Could not clean up the staged copy of %s", self.target, exc_info=True)


def write_bytes_atomically(target: ObjectStoragePath, data: bytes) -> None:
    """Write ``data`` to ``target`` through a :class:`StagedObject`."""
    staged = StagedObject(target)
    try:
        staged.write(data)
        staged.commit()
    except BaseException:
        staged.discard()
        raise
