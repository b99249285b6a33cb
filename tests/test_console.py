"""The console progress: a live bar on terminals, plain log lines elsewhere."""

import io

from absl import logging

from resnet import console

SCALARS = {"loss": 1.5, "accuracy": 0.25, "learning_rate": 1e-3, "images_per_second": 512.0}


class Terminal(io.StringIO):
  def isatty(self):
    return True


def test_a_terminal_gets_one_redrawn_line_per_epoch():
  stream = Terminal()
  progress = console.Progress(total_steps=40, steps_per_epoch=20, stream=stream)
  progress.update(10, SCALARS)
  progress.update(20, SCALARS)
  drawn = stream.getvalue()
  assert drawn.count("\r") == 2 and "\n" not in drawn  # Redrawn in place.
  assert "epoch 1 [" in drawn and "10/20" in drawn and "20/20" in drawn
  assert "512 img/s" in drawn and "epoch left" in drawn and "run left" in drawn
  assert "=" * 24 in drawn  # The bar is full at the end of the epoch.
  progress.end_epoch("epoch   1/2  ...")
  assert stream.getvalue().endswith("\r\x1b[K")  # The bar is wiped before the summary.


def test_a_log_file_gets_plain_lines(capsys, monkeypatch):
  stream = io.StringIO()  # Not a terminal (CI logs, nohup, pipes).
  messages = []
  monkeypatch.setattr(logging, "info", lambda message, *args: messages.append(message % args))
  progress = console.Progress(total_steps=40, steps_per_epoch=20, stream=stream)
  progress.update(10, SCALARS)
  assert stream.getvalue() == ""
  assert messages == ["step 10/40 (epoch 0.50): loss 1.5000 accuracy 0.2500 lr 1.00e-03 512 img/s"]
  progress.end_epoch("epoch   1/2  summary")
  assert capsys.readouterr().out == "epoch   1/2  summary\n"
