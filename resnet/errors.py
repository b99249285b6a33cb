"""The one base class of the errors a user can act on, and how they are printed.

Every error whose message is the whole story for the user (a bad flag, unreadable
data, an unusable model directory, a diverged run, a busy directory, ...) is a
`UserError`; the programs print it as one line and exit with status 1. Each kind is
defined beside the code that raises it (config.ConfigError, data.sources.DataError,
checkpointing.CheckpointError, ...). Anything else is a bug, and keeps its traceback.
"""


class UserError(Exception):
  """An error with a message meant for the user: what is wrong and what to do."""


def one_line_message(error):
  """An exception's message for a one-line error: its first line (TF's run to pages), or
  its type's name."""
  return (str(error).strip().splitlines() or [type(error).__name__])[0]
