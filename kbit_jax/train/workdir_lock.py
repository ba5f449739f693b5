"""One process per workdir: the lock `kbit train` and `kbit grid` hold while they run.

    with workdir_lock.hold(workdir, "kbit train"):   # WorkdirError if another holds it
      ...

The lock is `<workdir>/kbit.lock` (process i > 0 of a multi-process run: `kbit.lock.<i>`:
every process of a run locks its own file, so a second run is refused on every process,
and the processes of one run, e.g. tests/test_multiprocess.py's two on one host, do not
refuse each other). It holds the holder's host, pid, process start time, command and
start date, and is an advisory `flock` on that file: the kernel releases it when the
holder exits, `kill -9` included, so a lock file left behind is never mistaken for a live
one. Where `flock` is unavailable (some network file systems) the file's content decides:
a holder on this host whose pid is gone (or belongs to a process started at another
time) is stale and taken over; any other holder is refused. Taking over a stale lock is
said in one line.

Creating the lock is also the first write into the workdir: a workdir that is a file, or
that cannot be written, is refused here, before anything is compiled. Remote workdirs
(`gs://...`) are not locked: object stores have no such lock, and a preempted TPU VM's
rerun (launch/tpu_vm.sh) must be able to resume.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
from typing import Iterator

LOCK_NAME = "kbit.lock"


class WorkdirError(ValueError):
  """A workdir that cannot be used: locked by another run, not a directory, not writable,
  or holding checkpoints of another model (checkpoint.check_workdir)."""


def lock_path(workdir: str, process_index: int = 0) -> str:
  name = LOCK_NAME if process_index == 0 else f"{LOCK_NAME}.{process_index}"
  return os.path.join(os.path.abspath(workdir), name)


def _start_time(pid: int) -> str:
  """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), or
  "" where /proc is not there: with the pid, it names one process even if pids wrap."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return ""


def _alive(pid: int, start: str) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # exists, another user's
  return not start or not _start_time(pid) or _start_time(pid) == start


def _describe(holder: dict) -> str:
  return (
    f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
    f"({holder.get('command', '?')}, since {holder.get('since', '?')})"
  )


def _read(fd: int) -> dict:
  os.lseek(fd, 0, os.SEEK_SET)
  try:
    holder = json.loads(os.read(fd, 65536).decode("utf-8") or "{}")
  except (UnicodeDecodeError, json.JSONDecodeError):
    return {}
  return holder if isinstance(holder, dict) else {}


def _is_stale(holder: dict) -> bool:
  """A holder on this host that is not running (any other holder might be)."""
  if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
    return False
  return not _alive(holder["pid"], str(holder.get("start", "")))


class WorkdirLock:
  """The lock of one workdir for this process (see the module docstring)."""

  def __init__(self, workdir: str, command: str, process_index: int = 0):
    self.workdir, self.command = workdir, command
    self.path = lock_path(workdir, process_index)
    self.fd: int | None = None

  def _open(self) -> int:
    workdir = os.path.dirname(self.path)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
      raise WorkdirError(f"workdir {self.workdir} is a file, not a directory")
    try:
      os.makedirs(workdir, exist_ok=True)
      return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise WorkdirError(
        f"cannot write to workdir {self.workdir} ({type(e).__name__}: {e.strerror or e})"
      ) from None

  def acquire(self) -> None:
    import fcntl

    for _ in range(10):  # the file may be replaced between open and lock: retry
      fd = self._open()
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = _read(fd)
        os.close(fd)
        raise WorkdirError(
          f"workdir {self.workdir} is in use by {_describe(holder)}; wait for it to "
          f"finish or stop it (lock file {self.path})"
        ) from None
      except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
          os.close(fd)
          raise
        holder = _read(fd)  # no flock here: the file's content decides
        if holder and not _is_stale(holder):
          os.close(fd)
          raise WorkdirError(
            f"workdir {self.workdir} is in use by {_describe(holder)} (lock file "
            f"{self.path}; this file system has no flock: delete it if that process "
            "is gone)"
          ) from None
      try:
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if not same:  # released and removed by its holder meanwhile: lock the new file
        os.close(fd)
        continue
      previous = _read(fd)
      if previous and _is_stale(previous) and previous.get("pid") != os.getpid():
        print(
          f"{self.command}: replaced a stale lock of {_describe(previous)}, which is no "
          f"longer running ({self.path})",
          flush=True,
        )
      self._write(fd)
      self.fd = fd
      return
    raise WorkdirError(f"could not lock workdir {self.workdir}: {self.path} keeps changing")

  def _write(self, fd: int) -> None:
    holder = dict(
      host=socket.gethostname(),
      pid=os.getpid(),
      start=_start_time(os.getpid()),
      command=self.command,
      since=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    )
    try:
      os.ftruncate(fd, 0)
      os.lseek(fd, 0, os.SEEK_SET)
      os.write(fd, json.dumps(holder).encode("utf-8"))
      os.fsync(fd)
    except OSError as e:
      os.close(fd)
      raise WorkdirError(
        f"cannot write to workdir {self.workdir} ({type(e).__name__}: {e.strerror or e})"
      ) from None

  def release(self) -> None:
    if self.fd is None:
      return
    with contextlib.suppress(OSError):
      if os.fstat(self.fd).st_ino == os.stat(self.path).st_ino:
        os.unlink(self.path)
    os.close(self.fd)
    self.fd = None


@contextlib.contextmanager
def hold(workdir: str, command: str, process_index: int | None = None) -> Iterator[None]:
  """Holds the workdir's lock for the block (nothing for a remote workdir); raises
  WorkdirError naming the holder if another process has it."""
  if "://" in str(workdir):
    yield
    return
  if process_index is None:
    import jax

    process_index = jax.process_index()
  lock = WorkdirLock(str(workdir), command, process_index)
  lock.acquire()
  try:
    yield
  finally:
    lock.release()
