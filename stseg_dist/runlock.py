"""One run at a time per output folder: a lock file created atomically in OUT.

Two runs writing into one OUT would interleave their tiles, staging folders and published
outputs. A run first creates ``OUT/.stseg-lock`` exclusively (a hard link of a finished temporary
file on a local disk, a conditional PUT with ``If-None-Match: *`` on S3 through fsspec's ``x``
mode), holding who holds it (pid, host, start time) and a heartbeat it refreshes while it runs. A
second run finds the lock and refuses with an error naming the lock and its holder. A lock whose
holder is gone (its pid is dead on this host, or its heartbeat is older than ``stale_s``) is
taken over, so a killed run never blocks the folder for good.

Where a filesystem offers no exclusive create, the lock is written and read back after a pause;
that narrows but does not close the window in which two runs starting together both proceed.
Heartbeats use the writer's clock: clocks that disagree by more than ``stale_s - heartbeat_s``
can make a live lock look stale.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from . import redact
from .errors import OutputError
from .io import storage

log = logging.getLogger(__name__)

LOCK_NAME = ".stseg-lock"
HEARTBEAT_S = 15.0
STALE_S = 120.0
_HELD: dict[str, RunLock] = {}  # locks held by this process's threads: a nested hold is a no-op
_HELD_GUARD = threading.Lock()


class RunLock:
    """The lock on one output folder; use :func:`hold` rather than this class directly."""

    def __init__(
        self,
        out_url: str,
        storage_options: dict | None = None,
        *,
        stale_s: float = STALE_S,
        heartbeat_s: float = HEARTBEAT_S,
    ):
        if heartbeat_s >= stale_s:
            raise ValueError(
                f"heartbeat_s ({heartbeat_s}) must be shorter than stale_s ({stale_s})"
            )
        self.out_url = out_url
        self.url = storage.join(out_url, LOCK_NAME)
        self.so = dict(storage_options or {})
        self.stale_s, self.heartbeat_s = stale_s, heartbeat_s
        self.token = uuid.uuid4().hex
        self.started = dt.datetime.now(dt.timezone.utc).isoformat()
        self.lost: str | None = None  # why the lock is no longer ours, if it was taken over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the record --------------------------------------------------------------------------
    def _record(self) -> bytes:
        now = time.time()
        return json.dumps(
            {
                "token": self.token,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": self.started,
                "heartbeat": dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat(),
                "heartbeat_unix": now,
                "out": redact.scrub(str(self.out_url)),
            },
            indent=2,
        ).encode()

    def _read(self) -> dict[str, Any] | None:
        """The lock's record; None if there is no lock; {} if it cannot be parsed."""
        fs, path = storage.fs_and_path(self.url, self.so)
        try:
            with fs.open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None
        try:
            rec = json.loads(data.decode())
            return rec if isinstance(rec, dict) else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            return {}

    def _age_s(self) -> float | None:
        """Seconds since the lock file was last written (for a record that cannot be parsed)."""
        fs, path = storage.fs_and_path(self.url, self.so)
        try:
            mtime = fs.modified(path)
        except (FileNotFoundError, NotImplementedError, OSError):
            return None
        if mtime.tzinfo is None:
            mtime = (
                mtime.replace(tzinfo=dt.timezone.utc)
                if storage.is_remote(self.url)
                else mtime.astimezone()
            )
        return (dt.datetime.now(dt.timezone.utc) - mtime).total_seconds()

    # -- create / take over ------------------------------------------------------------------
    def _create(self) -> bool:
        """Create the lock if there is none; True if this call created it."""
        data = self._record()
        fs, path = storage.fs_and_path(self.url, self.so)
        parent = path.rsplit("/", 1)[0]
        if not storage.is_remote(self.url):
            if os.path.exists(parent) and not os.path.isdir(parent):
                raise OutputError(f"output {self.out_url} exists and is a file, not a folder")
            tmp = f"{path}.{self.token}"
            try:
                os.makedirs(parent, exist_ok=True)
                with open(tmp, "wb") as fh:
                    fh.write(data)
            except OSError as exc:
                raise OutputError(f"output {self.out_url} is not writable: {exc}") from exc
            try:
                os.link(
                    tmp, path
                )  # atomic, fails if the lock exists, and never shows half a record
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        try:
            with fs.open(path, "xb") as fh:
                fh.write(data)
            return True
        except FileExistsError:
            return False
        except (
            ValueError,
            NotImplementedError,
            TypeError,
        ):  # no exclusive mode: write and read back
            if fs.exists(path):
                return False
            with fs.open(path, "wb") as fh:
                fh.write(data)
            time.sleep(1.0)
            rec = self._read()
            return bool(rec) and rec.get("token") == self.token
        except OSError as exc:  # e.g. a 412 Precondition Failed not mapped to FileExistsError
            if fs.exists(path):
                return False
            raise OutputError(f"cannot create the lock {redact.scrub(self.url)}: {exc}") from exc

    def _stale(self, rec: dict[str, Any]) -> str | None:
        """Why the holder of ``rec`` is gone, or None if it may still be running."""
        if not rec:
            age = self._age_s()
            if age is not None and age > self.stale_s:
                return f"an unreadable lock not written for {age:.0f} s"
            return None
        if rec.get("host") == socket.gethostname() and isinstance(rec.get("pid"), int):
            try:
                os.kill(rec["pid"], 0)
            except ProcessLookupError:
                return f"its holder, pid {rec['pid']} on this host, is gone"
            except PermissionError:
                pass  # alive, another user's
        beat = rec.get("heartbeat_unix")
        if isinstance(beat, (int, float)) and time.time() - beat > self.stale_s:
            return (
                f"its heartbeat is {time.time() - beat:.0f} s old "
                f"(stale after {self.stale_s:.0f} s)"
            )
        return None

    def _held_error(self, rec: dict[str, Any]) -> OutputError:
        if rec:
            beat = rec.get("heartbeat_unix")
            ago = (
                f", last heartbeat {time.time() - beat:.0f} s ago"
                if isinstance(beat, (int, float))
                else ""
            )
            who = (
                f"pid {rec.get('pid')} on host {rec.get('host')}, started {rec.get('started')}{ago}"
            )
        else:
            who = "a run whose lock record is being written or is unreadable"
        return OutputError(
            f"output {redact.scrub(str(self.out_url))} is in use by another stseg run ({who}); "
            "lock: "
            f"{redact.scrub(self.url)}. Wait for that run to finish; a lock whose holder died is "
            "taken over "
            f"by the next run once its heartbeat is {self.stale_s:.0f} s old"
        )

    def acquire(self) -> RunLock:
        for _ in range(5):
            if self._create():
                self._start_heartbeat()
                return self
            rec = self._read()
            if rec is None:
                continue  # released in between: try again
            why = self._stale(rec)
            if why is None:
                raise self._held_error(rec)
            if self._read() == rec:  # remove it only if no one refreshed or took it meanwhile
                log.warning("taking over the lock %s: %s", redact.scrub(self.url), why)
                storage.remove(self.url, self.so)
        raise OutputError(
            f"could not take the lock {redact.scrub(self.url)}: other runs keep taking it"
        )

    # -- heartbeat and release ---------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="stseg-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                rec = self._read()
                if not rec or rec.get("token") != self.token:
                    self.lost = (
                        f"the lock {redact.scrub(self.url)} was removed or taken over by another "
                        "run"
                    )
                    log.error(self.lost)
                    return
                storage.write_bytes_atomic(self.url, self._record(), self.so)
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; the run goes on
                log.warning("lock heartbeat failed for %s: %s", redact.scrub(self.url), exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        rec = self._read()
        if rec and rec.get("token") == self.token:
            storage.remove(self.url, self.so)
        elif self.lost is None:
            log.warning("the lock %s was no longer this run's at the end", redact.scrub(self.url))


@contextlib.contextmanager
def hold(out_url: str, storage_options: dict | None = None, **kwargs) -> Iterator[RunLock]:
    """Hold the lock on ``out_url`` for the block; a nested hold in the same process is a no-op."""
    key = (
        f"{str(out_url).rstrip('/')}@{threading.get_ident()}"  # re-entrant per thread, not process
    )
    with _HELD_GUARD:
        held = _HELD.get(key)
    if held is not None:
        yield held
        return
    lock = RunLock(out_url, storage_options, **kwargs).acquire()
    with _HELD_GUARD:
        _HELD[key] = lock
    try:
        yield lock
    finally:
        with _HELD_GUARD:
            _HELD.pop(key, None)
        lock.release()
