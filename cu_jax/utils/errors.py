"""User-facing errors: one line that names the bad value and the fix."""


class UserError(Exception):
  """Bad input from the user (config, data, checkpoint, workdir).

  The CLI prints the message as a single line and exits non-zero; nothing on disk is modified
  after one is raised.
  """
