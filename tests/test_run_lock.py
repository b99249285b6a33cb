"""MODEL_DIR/run.lock: a live run refuses a second start; a dead one never blocks a resume."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from resnet import run_lock


def write_lock(model_dir, **fields):
  """A lock as run_lock writes it: this process on this host unless `fields` say otherwise."""
  now = time.time()
  owner = {
    "host": socket.gethostname(),
    "pid": os.getpid(),
    "start_ticks": run_lock.process_start_ticks(os.getpid()),
    "started": now,
    "refreshed": now,
    "token": "someone-else",
    **fields,
  }
  with open(os.path.join(model_dir, run_lock.LOCK_FILE), "w") as file:
    json.dump(owner, file)
  return owner


def dead_pid():
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait()
  return process.pid


def test_a_live_lock_refuses_and_is_left_as_it_was(tmp_path):
  owner = write_lock(tmp_path, started=1_700_000_000)  # 2023-11-14 22:13:20 UTC.
  before = (tmp_path / run_lock.LOCK_FILE).read_bytes()
  with pytest.raises(run_lock.RunLockedError) as error:
    with run_lock.hold(str(tmp_path)):
      pytest.fail("entered a held directory")
  message = str(error.value)
  assert f"host {owner['host']}, pid {os.getpid()}, started 2023-11-14 22:13:20 UTC" in message
  assert "\n" not in message and "wait for it to finish" in message
  assert (tmp_path / run_lock.LOCK_FILE).read_bytes() == before
  assert os.listdir(tmp_path) == [run_lock.LOCK_FILE]  # No temporary file left either.


STALE_LOCKS = {  # Fields of a lock whose run is gone.
  "dead_pid": lambda: {"pid": dead_pid()},  # Killed.
  "reused_pid": lambda: {"start_ticks": -1},  # Its pid now names another process (this one).
  "other_host_silent": lambda: {
    "host": "elsewhere",
    "refreshed": time.time() - run_lock.STALE_SECONDS - 1,
  },
}


@pytest.mark.parametrize("kind", STALE_LOCKS)
def test_a_stale_lock_is_replaced_then_removed(tmp_path, kind, caplog):
  write_lock(tmp_path, **STALE_LOCKS[kind]())
  with run_lock.hold(str(tmp_path)) as owner:
    with open(tmp_path / run_lock.LOCK_FILE) as file:
      assert json.load(file) == owner and owner["pid"] == os.getpid()
  assert "Replacing the stale lock of a run that ended without removing it" in caplog.text
  assert os.listdir(tmp_path) == []  # Removed on exit.


def test_a_recent_lock_of_another_host_refuses_and_says_how_to_release_it(tmp_path):
  write_lock(tmp_path, host="elsewhere", refreshed=time.time() - 30)
  with pytest.raises(
    run_lock.RunLockedError,
    match=r"host elsewhere.*refreshed its lock 3\d s ago.*delete .*run.lock",
  ):
    with run_lock.hold(str(tmp_path)):
      pass


def test_the_lock_is_removed_on_an_error_and_a_second_hold_is_refused(tmp_path):
  with pytest.raises(KeyboardInterrupt):
    with run_lock.hold(str(tmp_path)):
      with pytest.raises(run_lock.RunLockedError, match=f"pid {os.getpid()}"):
        with run_lock.hold(str(tmp_path)):
          pass
      raise KeyboardInterrupt  # As a Ctrl-C outside the training loop.
  assert os.listdir(tmp_path) == []


def test_the_holder_refreshes_its_lock(tmp_path, monkeypatch):
  monkeypatch.setattr(run_lock, "REFRESH_SECONDS", 0.05)
  with run_lock.hold(str(tmp_path)) as owner:
    started = owner["refreshed"]
    time.sleep(0.3)
    with open(tmp_path / run_lock.LOCK_FILE) as file:
      refreshed = json.load(file)["refreshed"]
  assert refreshed > started and os.listdir(tmp_path) == []


def test_a_file_that_is_not_a_lock_is_refused(tmp_path):
  (tmp_path / run_lock.LOCK_FILE).write_text("{")
  with pytest.raises(run_lock.RunLockedError, match="not a lock written by train.py"):
    with run_lock.hold(str(tmp_path)):
      pass
