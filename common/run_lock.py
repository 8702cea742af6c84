"""One run per output folder: an exclusive ``flock`` on ``<out>/.run.lock``, with the holder's pid in it.

The kernel drops a ``flock`` when its process dies (SIGKILL included), so a lock file that a killed run
left behind is taken over by the next run; the pid written in the file only names the holder in the
message a second run gets. Under torchrun rank 0 holds the lock for the whole job and every rank learns
the outcome, so all of them stop together. A start that fails after the lock was taken leaves the folder
as it found it: releasing removes the lock file and the folders that taking it created, if still empty.
"""
from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

LOCK_NAME = ".run.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _read_holder(fd: int) -> str:
    """The first line the holder wrote (its pid and program), or '' when it has not written it yet."""
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 200).decode(errors="replace").split("\n")[0].strip()


class RunLock:
    """An exclusive lock on ``folder``; ``release()`` (idempotent) drops it and undoes what taking it created."""

    def __init__(self, folder: Path, program: str):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.created: list[Path] = []  # folders made to hold the lock file, outermost last
        self.fd: int | None = None
        self.previous = ""  # what a stale lock file said (its holder died without releasing)
        self._take(program)

    def _take(self, program: str) -> None:
        missing = []
        probe = self.folder.absolute()
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        self.folder.mkdir(parents=True, exist_ok=True)
        self.created = missing
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                self._remove_created()
                who = "pid " + ", ".join(holder.split(" ", 1)) if holder else "one that is starting"
                raise ValueError(f"--out {self.folder} is in use by another run ({who}); wait for it to finish "
                                 "or choose another --out") from None
            try:  # the file may have been unlinked by a releasing holder between open and flock: then retry
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.previous = _read_holder(fd)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()} {program}\n".encode())
        self.fd = fd

    def stale_note(self) -> str:
        """A one-line note when the lock file was left by a run that died ('' otherwise)."""
        pid = self.previous.split(" ", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            return ""
        state = "no longer running" if not _alive(int(pid)) else "which no longer holds it"
        return f"note: the lock {self.path} was left by pid {pid} ({state}); taken over"

    def _remove_created(self) -> None:
        for folder in self.created:  # innermost first
            try:
                folder.rmdir()
            except OSError:  # not empty (the run wrote something) or already gone
                break
        self.created = []

    def release(self) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still holding it: a waiting opener retries on the new file
        os.close(self.fd)
        self.fd = None
        self._remove_created()


def hold_run_lock(folder: Path, program: str, ctx=None) -> RunLock | None:
    """Rank 0 takes the lock of ``folder``; every rank raises the same one-line ValueError when it is taken.

    ``ctx`` is a ``common.distributed.DistContext`` (None: a single process). Returns rank 0's lock (None on
    other ranks); a stale lock's note goes to stderr.
    """
    lock, error = None, None
    if ctx is None or ctx.is_main:
        try:
            lock = RunLock(folder, program)
        except ValueError as err:
            error = str(err)
    if ctx is not None:
        error = ctx.broadcast(error)
    if error:
        if lock is not None:
            lock.release()
        raise ValueError(error)
    if lock is not None and (note := lock.stale_note()):
        print(note, file=sys.stderr)
    return lock
