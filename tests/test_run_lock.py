"""MODEL_DIR/run.lock: a live run refuses a second start; a dead one never blocks a resume."""

import json
import os
import socket
import subprocess
import sys
import time
import types

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


@pytest.fixture
def clock(monkeypatch):
  """run_lock's clock, moved by its sleeps instead of waiting; `on_sleep` runs after each."""
  state = types.SimpleNamespace(now=time.time(), slept=0.0, on_sleep=lambda: None)

  def sleep(seconds):
    state.now += seconds
    state.slept += seconds
    state.on_sleep()

  monkeypatch.setattr(run_lock, "_now", lambda: state.now)
  monkeypatch.setattr(run_lock, "_sleep", sleep)
  return state


def test_a_new_host_takes_over_a_lock_not_refreshed_for_a_minute_at_once(tmp_path, clock):
  # A recreated VM, a rescheduled pod: a new host name, and the old run's lock left behind.
  write_lock(tmp_path, host="old-vm", refreshed=clock.now - 60)
  with run_lock.hold(str(tmp_path)) as owner:
    assert owner["host"] == socket.gethostname()
  assert clock.slept == 0


def test_a_new_host_right_after_a_crash_waits_under_a_minute_then_takes_over(
  tmp_path, clock, caplog
):
  write_lock(tmp_path, host="old-pod", refreshed=clock.now - 5)
  with run_lock.hold(str(tmp_path)) as owner:
    assert owner["host"] == socket.gethostname()
  assert "refreshed it 5 s ago: waiting up to 45 s" in caplog.text
  assert 45 <= clock.slept < 46  # Until the lock is stale, reading it every few seconds.


def test_a_live_run_on_another_host_is_refused_once_it_refreshes_its_lock(tmp_path, clock):
  holder = write_lock(tmp_path, host="elsewhere", refreshed=clock.now - 10)

  def live_holder_refreshes():  # Every REFRESH_SECONDS after its last refresh.
    if clock.now - holder["refreshed"] >= run_lock.REFRESH_SECONDS:
      write_lock(tmp_path, **dict(holder, refreshed=clock.now))

  clock.on_sleep = live_holder_refreshes
  with pytest.raises(
    run_lock.RunLockedError,
    match=r"host elsewhere.*refreshed its lock 0 s ago.*delete .*run.lock",
  ):
    with run_lock.hold(str(tmp_path)):
      pass
  assert clock.slept <= run_lock.REFRESH_SECONDS  # Refused as soon as it is seen refreshed.
  assert json.loads((tmp_path / run_lock.LOCK_FILE).read_text())["host"] == "elsewhere"


def test_a_lock_whose_process_cannot_be_probed_goes_stale_by_its_refreshes(
  tmp_path, clock, monkeypatch
):
  # Without /proc a live process id may name another process (a container restarted
  # with the same host name): the refreshes decide, as for another host.
  monkeypatch.setattr(run_lock, "process_start_ticks", lambda pid: None)
  write_lock(tmp_path, start_ticks=None, refreshed=clock.now - 60)
  with run_lock.hold(str(tmp_path)):
    pass
  assert clock.slept == 0


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
