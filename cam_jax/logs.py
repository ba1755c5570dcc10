"""Log filtering shared by the command-line entry points."""

import logging as py_logging

from absl import logging


class _QuietLibraries(py_logging.Filter):
  """Drops INFO lines of orbax and TFDS (dozens per checkpoint), so progress lines show."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    noisy = '/orbax/' in record.pathname or '/tensorflow_datasets/' in record.pathname
    return record.levelno > py_logging.INFO or not noisy


def quiet_libraries() -> None:
  """Installs the filter on absl's logger (what every library's lines go through)."""
  logging.get_absl_logger().addFilter(_QuietLibraries())
