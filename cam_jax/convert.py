r"""Converts torchvision or Caffe ImageNet weights into a cam_jax checkpoint.

  python -m cam_jax.convert --from=torchvision --network=googlenet \
      --weights=googlenet-1378be20.pth --out=weights/googlenet_tv
  python -m cam_jax.convert --from=caffe --network=googlenet_gap \
      --weights=imagenet_googlenetCAM_train_iter_120000.caffemodel --out=weights/googlenet_cam

`--out` becomes a workdir holding one checkpoint (`checkpoints/0`: the model's state and
meta, with the input convention and the ImageNet class names) that `--checkpoint`,
`--mode=evaluate --workdir`, `--mode=localize` and `--config.init_from.workdir` accept.
The layers used, left fresh (a GAP network's added layers) and unused (auxiliary heads, a
dropped classifier) are printed. A failed conversion writes nothing; an existing
checkpoint in `--out` is never overwritten.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from absl import app, flags, logging
from flax import nnx

from cam_jax import checkpoints
from cam_jax import logs
from cam_jax import models
from cam_jax.pretrained import imagenet
from cam_jax.pretrained import layer_maps
from cam_jax.pretrained import weights as weights_lib

_FROM = flags.DEFINE_enum('from', None, list(weights_lib.FRAMEWORKS),
                          'The framework of --weights; default: detected from the file.')
_NETWORK = flags.DEFINE_string('network', None, 'Our network (a name of '
                               'cam_jax.models.MODELS), e.g. googlenet_gap.')
_WEIGHTS = flags.DEFINE_string('weights', None, 'A .pth/.pt (torch.save), .safetensors or '
                               '.caffemodel file.')
_OUT = flags.DEFINE_string('out', None, 'The workdir to write.')
_VARIANT = flags.DEFINE_string('variant', None, "Our trunk variant ('caffe', 'caffenet', "
                               "'torchvision'); default: the one the weights need.")
_MEAN_FILE = flags.DEFINE_string('mean_file', None, 'Caffe only: subtract this mean image '
                                 '(.binaryproto, .npy or the CAM release .mat) instead of its '
                                 'per-channel mean.')
_SEED = flags.DEFINE_integer('seed', 0, 'Initialisation of the layers the file does not give.')


def num_classes_of(source: layer_maps.Source, network: str,
                   tensors: dict[str, np.ndarray]) -> int:
  """The classes of the file's classifier when the source completes `network` (its last
  entry is the classifier's bias), else ImageNet's 1,000 (a backbone; the head is fresh)."""
  if network in source.complete_for:
    return int(np.asarray(tensors[source.entries[-1].source]).size)
  return imagenet.NUM_CLASSES


def convert(network: str, weights_path: str, out: str, *, framework: str | None = None,
            variant: str | None = None, mean_file: str | None = None,
            seed: int = 0) -> dict[str, Any]:
  """Writes `out`/checkpoints/0 from the weights file; returns its meta."""
  step_dir = os.path.join(os.path.abspath(out), 'checkpoints', '0')
  if os.path.exists(step_dir):
    raise FileExistsError(f'{step_dir} exists: choose another --out (a conversion never '
                          'overwrites a checkpoint)')
  weights = weights_lib.read(weights_path, framework)
  source = weights_lib.choose_source(network, weights, variant)
  kwargs = dict(source.model_kwargs)
  if variant is not None and weights_lib.default_variant(network) is not None:
    kwargs['variant'] = variant
  num_classes = num_classes_of(source, network, weights.tensors)
  # Jitted: a full-size network initialises in about half the time (same values).
  model = nnx.jit(lambda: models.get_model(network, num_classes=num_classes,
                                           rngs=nnx.Rngs(seed), **kwargs))()
  converted = weights_lib.convert(model, network, weights, source, mean_file=mean_file)
  weights_lib.load_into(model, converted)

  names = (list(imagenet.class_names()) if num_classes == imagenet.NUM_CLASSES
           else [f'class {i}' for i in range(num_classes)])
  meta = {'step': 0, 'model': network, 'model_kwargs': kwargs, 'num_classes': num_classes,
          'dataset': 'ilsvrc2012_loc' if num_classes == imagenet.NUM_CLASSES else '',
          'class_names': names, 'input': converted.convention.to_meta(), 'resume': None,
          'pretrained': {'file': os.path.abspath(weights_path), 'source': source.name,
                         'description': source.description, 'unused': converted.unused,
                         'fresh': converted.fresh}}
  # The state as training saves it, (model, optimizer) with the model first, minus the
  # optimizer: restores for inference and init_from read only the model.
  state = nnx.State({0: nnx.state(model)})
  with checkpoints.checkpoint_manager(out, None, max_to_keep=1) as manager:
    checkpoints.save_checkpoint(manager, 0, state, meta)
    manager.wait_until_finished()
  return meta


def main(argv):
  logs.quiet_libraries()
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  meta = convert(_NETWORK.value, _WEIGHTS.value, _OUT.value, framework=_FROM.value,
                 variant=_VARIANT.value, mean_file=_MEAN_FILE.value, seed=_SEED.value)
  info = meta['pretrained']
  logging.info('%s (%s) → %s/checkpoints/0: %s, %d classes, input %s', _WEIGHTS.value,
               info['description'], _OUT.value, meta['model'], meta['num_classes'],
               meta['input']['name'])
  logging.info('Fresh (not in the file): %s',
               weights_lib.describe_layers(info['fresh'], '/', limit=None))
  logging.info('Unused (in the file, not in %s): %s', meta['model'],
               weights_lib.describe_layers(info['unused'], '.', limit=None))


if __name__ == '__main__':
  flags.mark_flags_as_required(['network', 'weights', 'out'])
  app.run(main)
