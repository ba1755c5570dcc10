"""cam_jax: Class Activation Mapping (Zhou et al., CVPR 2016) in JAX/Flax NNX.

`cam_jax.load(path)` gives a trained or converted network's top-k classes, CAMs and boxes
for any images (`cam_jax.inference`); `python -m cam_jax.main` trains, evaluates and
localizes from a config.
"""


def load(path, config=None, *, mesh=None):
  """`cam_jax.inference.load` (imported on first use, so that `import cam_jax` stays
  light): a `CamModel` whose `predict(images)` gives top-k classes, CAMs and boxes."""
  from cam_jax import inference  # pylint: disable=import-outside-toplevel
  return inference.load(path, config, mesh=mesh)
