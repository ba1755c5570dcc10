"""The error every weights reader raises for a file it cannot use."""


class WeightsFileError(ValueError):
  """A weights file that cannot be used: the message names the file, the part of it
  (tensor, layer, blob) and what was expected."""
