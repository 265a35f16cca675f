"""One training run per output folder: a lock file that holds the owner's pid and host.

`train` takes the lock before it reads or writes anything in the folder and releases it
when it returns or raises; a second run on the same folder is refused while the first
one lives. A process killed without a chance to clean up (SIGKILL, a power cut) leaves
its lock behind: a lock whose pid no longer runs on this host is stale, and the next run
takes it over with a warning. A lock from another host cannot be checked, so it is never
taken over; its message says how to remove it by hand.

The lock is created with its content in one step (a hard link of a complete temporary
file, or `O_EXCL` where links are not supported), so no reader ever sees an empty lock.
Taking over a stale lock renames it away first and checks that what was renamed is the
lock judged stale, so two runs that find the same stale lock cannot both take it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator

LOCK = "train.lock"


class RunLockedError(Exception):
    """The output folder is held by another training run (or by an unreadable lock).

    Example:
        >>> import json, os, socket, tempfile
        >>> holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": "now"}
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     with open(os.path.join(folder, "train.lock"), "w") as lock:
        ...         _ = lock.write(json.dumps(holder))  # a live run holds the folder
        ...     try:
        ...         train(TrainConfig(task="adding", seq_len=8), folder, progress=False)
        ...     except RunLockedError as error:
        ...         print(type(error).__name__)
        RunLockedError
    """


def _holder_text() -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started})


def _read(path: str) -> dict | None:
    """The lock's holder; None when the file is gone; {} when it is unreadable."""
    try:
        with open(path, encoding="utf-8") as file:
            holder = json.loads(file.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    valid = isinstance(holder, dict) and isinstance(holder.get("pid"), int)
    return holder if valid and isinstance(holder.get("host"), str) else {}


def _running(pid: int) -> bool:
    """Whether `pid` is a live process on this host (a zombie counts as dead)."""
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there: assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    with contextlib.suppress(OSError, IndexError):
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as file:
            if file.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    return True


def _create(path: str, text: str) -> bool:
    """Creates `path` holding `text` unless it exists; True when created."""
    directory = os.path.dirname(path) or "."
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{LOCK}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(temporary, 0o644)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(text)
        return True
    finally:
        with contextlib.suppress(OSError):
            os.remove(temporary)


def _describe(holder: dict) -> str:
    since = f", since {holder['started']}" if holder.get("started") else ""
    return f"pid {holder['pid']} on host {holder['host']}{since}"


def _take_over(path: str, stale: dict) -> None:
    # Rename, then check that the renamed file is the stale lock: if another run took it
    # over in between, what was renamed is that run's live lock, and it goes back.
    grave = f"{path}.{os.getpid()}.stale"
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return
    if _read(grave) == stale:
        os.remove(grave)
        return
    with contextlib.suppress(OSError):
        os.link(grave, path)
    with contextlib.suppress(OSError):
        os.remove(grave)


@contextlib.contextmanager
def run_lock(out: str, *, log: Callable[[str], None] = print) -> Iterator[str]:
    """Holds `out/train.lock` for the duration of the `with` block; yields its path.

    Raises:
        RunLockedError: a live run on this host holds the folder, or a run on another
            host does, or the lock file cannot be read (the message says which, and
            what to do).
    """
    path = os.path.join(out, LOCK)
    mine = _holder_text()
    for _ in range(5):
        if _create(path, mine):
            break
        holder = _read(path)
        if holder is None:  # released between our attempt and the read: try again
            continue
        if not holder:
            raise RunLockedError(
                f"{out} is locked by {path}, which cannot be read; if no training run is "
                f"using {out}, delete {path}"
            )
        here = holder["host"] == socket.gethostname()
        if here and not _running(holder["pid"]):
            log(
                f"warning: {path} was left by {_describe(holder)}, which is no longer "
                "running; taking the folder over"
            )
            _take_over(path, holder)
            continue
        where = "" if here else " (another host: it cannot be checked from here)"
        raise RunLockedError(
            f"{out} is in use by another training run ({_describe(holder)}){where}; wait "
            f"for it to finish or choose another --out. If that run is gone, delete {path}"
        )
    else:
        raise RunLockedError(f"could not take the lock {path}: other runs keep taking it")
    try:
        yield path
    finally:
        # Remove the lock only if it is still ours.
        if _read(path) == json.loads(mine):
            with contextlib.suppress(OSError):
                os.remove(path)
