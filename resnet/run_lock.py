"""MODEL_DIR/run.lock: one training run at a time in a model directory.

Two runs of the same command on one directory would both train to the end and
write the same checkpoint names over each other. The run's writer (the chief)
holds the lock from before it writes anything until it exits; a second start
is refused with the live run's host, process id and start time. A run that
died without removing its lock (SIGKILL, a lost machine) leaves a stale lock,
which the next start replaces:

- Same host: stale when its process is gone, or when the process id now
  belongs to another process (its start time in /proc differs).
- Another host (a recreated VM, a rescheduled pod or job: a new host name, the
  same gs:// directory), or a process that cannot be probed: the holder
  rewrites the lock every REFRESH_SECONDS, and a lock not rewritten for
  STALE_SECONDS (two missed rewrites and a slow one) is stale. A start that
  finds a more recent one waits until it would be stale, watching it: rewritten
  meanwhile, its run is live and the start is refused; untouched, it is
  replaced. So a restart on a new host waits at most STALE_SECONDS, with no
  one there to delete the lock (deleting MODEL_DIR/run.lock by hand releases
  it at once). The clocks of the hosts are assumed to agree to within a few
  seconds (NTP); a start never waits longer than STALE_SECONDS of its own.

What it cannot promise: tf.io.gfile has no atomic create-if-absent. The lock
is written under a temporary name and renamed into place only if no lock
exists, then read back: on a local or NFS file system that leaves a window of
microseconds; on gs:// (where a rename is a copy and a delete) two starts
within about a second of each other can both pass. It is a guard against the
second terminal and the re-submitted job, not a distributed mutex.
"""

import contextlib
import json
import os
import secrets
import socket
import threading
import time

import tensorflow as tf
from absl import logging

from resnet import errors

LOCK_FILE = "run.lock"
REFRESH_SECONDS = 20
STALE_SECONDS = 50  # Two missed refreshes, and a slow write: the holder is presumed dead.
WATCH_SECONDS = 5  # How often a waiting start reads the lock again.
OWNER_KEYS = {"host", "pid", "start_ticks", "started", "refreshed", "token"}


class RunLockedError(errors.UserError, RuntimeError):
  """Another run holds the model directory, with a message naming it."""


def process_start_ticks(pid):
  """When process `pid` started (clock ticks since boot), or None without /proc."""
  try:
    with open(f"/proc/{pid}/stat") as file:
      # Field 22; the command name (field 2) may hold spaces, so count after its ")".
      return int(file.read().rsplit(")", 1)[1].split()[19])
  except (OSError, IndexError, ValueError):
    return None


def _utc(seconds):
  return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _now():
  """Seconds since the epoch (a function of its own, so that tests can move time)."""
  return time.time()


def _sleep(seconds):
  time.sleep(seconds)


def describe(owner):
  """Names the run that wrote lock contents `owner`: its host, process id and start time."""
  return f"host {owner['host']}, pid {owner['pid']}, started {_utc(owner['started'])}"


def _process_alive(owner):
  """Whether the same-host process that wrote `owner` still runs; None if it cannot tell."""
  try:
    os.kill(owner["pid"], 0)  # Signal 0: only asks whether the process exists.
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # It exists, owned by another user.
  ticks = process_start_ticks(owner["pid"])
  if ticks is None or owner.get("start_ticks") is None:
    return None  # No /proc: a process with that id, perhaps another one.
  return ticks == owner["start_ticks"]  # Else its pid now names another process.


def is_stale(owner):
  """Whether the run that wrote lock contents `owner` is gone (see the module docstring)."""
  if owner["host"] == socket.gethostname():
    alive = _process_alive(owner)
    if alive is not None:
      return not alive
  return _now() - owner["refreshed"] > STALE_SECONDS


def _read(path):
  """The lock's contents, or None when there is no lock.

  Raises:
    RunLockedError: the file is not a lock this module wrote (it is never written
      in place, so a kill cannot leave half of one).
  """
  try:
    with tf.io.gfile.GFile(path) as file:
      text = file.read()
  except tf.errors.NotFoundError:
    return None
  try:
    owner = json.loads(text)
    if OWNER_KEYS <= owner.keys():
      return owner
  except (ValueError, AttributeError):  # Not JSON; JSON but not an object.
    pass
  raise RunLockedError(
    f"{path} is not a lock written by train.py; delete it if no run is using that directory."
  )


def _write(path, owner, overwrite):
  """Writes the lock whole (a temporary file renamed into place); with `overwrite`
  False, raises tf.errors.AlreadyExistsError if a lock exists."""
  # Not `path` + suffix: ram:// takes a name that prefixes another for a directory.
  directory, name = os.path.split(path)
  temporary = os.path.join(directory, f".{name}.{owner['token']}.tmp")
  with tf.io.gfile.GFile(temporary, "w") as file:
    file.write(json.dumps(owner, indent=2, sort_keys=True) + "\n")
  try:
    tf.io.gfile.rename(temporary, path, overwrite=overwrite)
  except tf.errors.AlreadyExistsError:
    tf.io.gfile.remove(temporary)
    raise


def _refused(model_dir, owner):
  where = os.path.join(model_dir, LOCK_FILE)
  if owner["host"] == socket.gethostname():
    remedy = "wait for it to finish or stop it"
  else:
    age = _now() - owner["refreshed"]
    remedy = (
      f"it refreshed its lock {age:.0f} s ago (a lock not refreshed for {STALE_SECONDS} s "
      f"is stale). Wait for it to finish, or if it is surely gone, delete {where}"
    )
  return RunLockedError(
    f"--model_dir={model_dir} is in use by another training run ({describe(owner)}; "
    f"{where}): {remedy}."
  )


def _acquire(path, model_dir):
  """Writes this process's lock at `path`, replacing a stale one; its contents."""
  now = _now()
  owner = {
    "host": socket.gethostname(),
    "pid": os.getpid(),
    "start_ticks": process_start_ticks(os.getpid()),
    "started": now,
    "refreshed": now,
    "token": secrets.token_hex(8),  # Tells this lock from a later one of the same process.
  }
  previous = _read(path)
  if previous is not None and not is_stale(previous):
    previous = _watch_until_stale(path, model_dir, previous)
  if previous is not None:
    logging.warning(
      "Replacing the stale lock of a run that ended without removing it (%s).",
      describe(previous),
    )
  try:
    _write(path, owner, overwrite=previous is not None)
  except tf.errors.AlreadyExistsError:  # Another start got there first.
    holder = _read(path)
    raise _refused(model_dir, holder) if holder else _unwritable(path) from None
  holder = _read(path)  # A start that renamed its lock over ours at the same moment wins.
  if holder is None:
    raise _unwritable(path)
  if holder["token"] != owner["token"]:
    raise _refused(model_dir, holder)
  return owner


def _watch_until_stale(path, model_dir, owner):
  """Waits while the recent lock `owner` at `path` (of another host, or of a process that
  cannot be probed) is neither rewritten nor stale.

  Returns:
    The stale lock's contents to replace, or None if it was removed meanwhile.

  Raises:
    RunLockedError: it was rewritten (its run is live), or it names a live process here.
  """
  if owner["host"] == socket.gethostname() and _process_alive(owner):
    raise _refused(model_dir, owner)
  started = _now()
  # Never past STALE_SECONDS of this host's clock, whatever the holder's clock says.
  deadline = min(owner["refreshed"], started) + STALE_SECONDS
  logging.warning(
    "%s is held by a run (%s) that refreshed it %.0f s ago: waiting up to %.0f s. If it "
    "is not refreshed meanwhile, that run is gone and this one takes over.",
    path,
    describe(owner),
    started - owner["refreshed"],
    deadline - started,
  )
  while _now() <= deadline:
    _sleep(min(WATCH_SECONDS, deadline - _now() + 0.01))
    current = _read(path)
    if current is None:
      return None
    if current != owner:  # Refreshed, or replaced by another start.
      raise _refused(model_dir, current)
  return owner


def _unwritable(path):
  return RunLockedError(f"Cannot create the lock {path}: the filesystem refused or lost it.")


def _refresh_until(stopped, path, owner):
  """Rewrites the lock every REFRESH_SECONDS until `stopped` is set (a thread)."""
  while not stopped.wait(REFRESH_SECONDS):
    try:
      holder = _read(path)
      if holder is None or holder["token"] != owner["token"]:
        logging.error("%s was removed or taken over (%s); no longer refreshed.", path, holder)
        return
      owner["refreshed"] = _now()
      _write(path, owner, overwrite=True)
    except (OSError, tf.errors.OpError) as error:  # A full disk must not stop training.
      logging.warning("Cannot refresh %s: %s", path, error)


@contextlib.contextmanager
def hold(model_dir):
  """Holds MODEL_DIR/run.lock for the duration of the `with` block.

  Call it before writing anything to `model_dir` (which must exist). The lock
  is removed however the block ends (return, exception, Ctrl-C, a SIGTERM
  handled by the loop); a SIGKILL leaves a stale lock for the next start.

  Raises:
    RunLockedError: a live run holds the directory; nothing was written.
  """
  path = os.path.join(model_dir, LOCK_FILE)
  owner = _acquire(path, model_dir)
  stopped = threading.Event()
  refresher = threading.Thread(
    target=_refresh_until, args=(stopped, path, owner), name="run-lock", daemon=True
  )
  refresher.start()
  try:
    yield owner
  finally:
    stopped.set()
    refresher.join()
    with contextlib.suppress(tf.errors.OpError, RunLockedError):
      holder = _read(path)
      if holder is not None and holder["token"] == owner["token"]:  # Never another's lock.
        tf.io.gfile.remove(path)
