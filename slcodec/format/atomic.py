"""Atomic outputs: every file or folder slcodec writes appears complete or not at all.

An output is written under a hidden temporary name beside its final one,
``.NAME.HOST.PID.RANDOM.tmp``, flushed to disk and renamed into place; on any error the
temporary is removed and an existing output is left as it was.  No torch, no numpy.

* Permissions are those a plain ``open()`` would give: a new output gets ``0o666`` (a
  folder ``0o777``) less the process umask, and an output that replaces an existing one keeps
  that one's mode (a truncating ``open()`` would too).
* A process killed while writing (SIGKILL, power loss) cannot remove its temporary files.
  Their names carry the writer's host and process id, so the next write of the same output
  removes the ones whose process is gone (:func:`remove_stale_temps`); temporaries of a
  live process, of another host (a shared file system) or of another naming scheme are
  never touched.  (Host means host name: containers that share both a host name and the
  output folder but not a process-id namespace can see each other's live writers as gone;
  the write whose temporary was removed then fails cleanly, the old output intact.)

:class:`AtomicFile` is the file writer (the container writer writes through its file
object), :func:`atomic_path` lends a temporary path to code that writes by name
(``torch.save``, ``h5py``), :func:`atomic_folder` does the same for a folder.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import socket

#: the host part of temporary names: a process id means something only on its own host
HOST_TAG = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<host>[0-9a-f]{8})\.(?P<pid>[0-9]{1,10})\.[0-9a-f]{8}\.tmp$")


def temp_name(name: str) -> str:
    """A fresh hidden temporary name for output ``name`` (a base name) of this process."""
    return f".{name}.{HOST_TAG}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def parse_temp_name(name: str):
    """``(output name, host tag, pid)`` of a temporary name made by :func:`temp_name`, else None."""
    m = _TEMP.match(name)
    return (m["name"], m["host"], int(m["pid"])) if m else None


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a process we may not signal exists too)."""
    if pid <= 0:
        return True  # not a process id we made: treat as alive, i.e. never remove
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError as exc:
        return exc.errno != errno.ESRCH
    return True


def remove_stale_temps(folder, output) -> list[str]:
    """Remove this naming scheme's temporary files (and folders) in ``folder`` left by dead
    processes of this host, for outputs ``output``: a base name, or a predicate on base
    names.  Returns the removed paths.  Errors (a file removed meanwhile, no permission) are
    ignored: cleaning up is a courtesy, never a reason to fail a write."""
    accept = output if callable(output) else (lambda name, _o=os.fspath(output): name == _o)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    removed = []
    for entry in names:
        parsed = parse_temp_name(entry) if entry.startswith(".") else None
        if parsed is None:
            continue
        name, host, pid = parsed
        if host != HOST_TAG or pid == os.getpid() or not accept(name) or process_alive(pid):
            continue
        path = os.path.join(folder, entry)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            removed.append(path)
        except OSError:
            pass
    return removed


def replaced_mode(path, default: int | None = None) -> int | None:
    """Permission bits of the existing output at ``path`` (what a truncating open() keeps), else ``default``."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        return default


def fsync_folder(folder) -> None:
    """Make a rename in ``folder`` durable (where the platform allows a folder fsync)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _parent(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{path}: folder {folder} does not exist")
    return folder


def _quiet_unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        pass


class AtomicFile:
    """A file that replaces ``path`` only when complete.

    ``file`` (opened ``w+b``) writes the temporary file ``tmp_path``; :meth:`finish` flushes,
    fsyncs and closes it and gives it its final permissions; :meth:`publish` renames it into
    place; :meth:`commit` does both.  :meth:`abort` (also the context manager's answer to an
    exception, or to a block left without commit) removes the temporary file, even when
    closing it fails (a full disk fails the flush of what is still buffered)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.folder = _parent(self.path)
        name = os.path.basename(self.path)
        remove_stale_temps(self.folder, name)
        for _ in range(100):
            self.tmp_path = os.path.join(self.folder, temp_name(name))
            try:
                # 0o666: the kernel applies the umask, as for a plain open()
                fd = os.open(self.tmp_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(errno.EEXIST, "no free temporary name", os.path.join(self.folder, name))
        try:
            self.file = os.fdopen(fd, "w+b")
        except BaseException:
            os.close(fd)
            _quiet_unlink(self.tmp_path)
            raise
        self.state = "open"

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.state != "published":
            self.abort()

    def finish(self) -> None:
        """Flush, fsync and close the temporary file; it gets the mode of the output it will
        replace (if any).  Writers that wrote by name (the file object closed) get it reopened
        for the fsync.  On failure the temporary file is removed."""
        try:
            if not self.file.closed:
                self.file.flush()
                os.fsync(self.file.fileno())
                self.file.close()
            else:
                with open(self.tmp_path, "rb") as f:
                    os.fsync(f.fileno())
            mode = replaced_mode(self.path)
            if mode is not None:
                os.chmod(self.tmp_path, mode)
        except BaseException:
            self.abort()
            raise
        self.state = "finished"

    def publish(self) -> None:
        """Rename the finished temporary file to ``path``, atomically replacing any file there."""
        if self.state != "finished":
            raise RuntimeError(f"{self.path}: publish before finish")
        try:
            os.replace(self.tmp_path, self.path)
        except BaseException:
            self.abort()
            raise
        self.state = "published"
        fsync_folder(self.folder)

    def commit(self) -> None:
        self.finish()
        self.publish()

    def abort(self) -> None:
        """Close (ignoring the errors of a failed write) and remove the temporary file."""
        if self.state == "published":
            return
        try:
            self.file.close()
        except OSError:
            pass  # the buffered bytes could not be written; they are being thrown away anyway
        finally:
            _quiet_unlink(self.tmp_path)
            self.state = "aborted"


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path`` to write by name; on a clean exit it is fsynced
    and renamed to ``path``, on an exception removed.

    ::

        with atomic_path("labels.pt") as tmp:
            torch.save(values, tmp)
    """
    out = AtomicFile(path)
    try:
        out.file.close()  # the caller writes by name (the empty file keeps its umask mode)
        yield out.tmp_path
        out.commit()
    except BaseException:
        out.abort()
        raise


@contextlib.contextmanager
def atomic_folder(folder):
    """Yield a temporary folder beside ``folder`` (which must not exist, or be empty) to fill;
    on a clean exit it is renamed to ``folder``, on an exception removed with its contents."""
    folder = os.fspath(folder)
    parent = _parent(folder)
    name = os.path.basename(os.path.abspath(folder))
    remove_stale_temps(parent, name)
    tmp = os.path.join(parent, temp_name(name))
    os.mkdir(tmp, 0o777)  # the umask applies, as for a plain mkdir
    try:
        yield tmp
        mode = replaced_mode(folder)
        if mode is not None:
            os.chmod(tmp, mode)
            os.rmdir(folder)  # empty (the caller checked); a non-empty one fails here, untouched
        os.rename(tmp, folder)
        fsync_folder(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = ["AtomicFile", "atomic_path", "atomic_folder", "remove_stale_temps", "temp_name", "parse_temp_name",
           "process_alive", "HOST_TAG"]
