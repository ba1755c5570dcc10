"""Shared by the model tests."""

import pytest

from tests import model_params


@pytest.fixture
def random_model():
  """`random_model(build, seed=0)`: `build()`'s model with NumPy-drawn parameters."""
  return model_params.random_model
