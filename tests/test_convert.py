"""`cam_jax.convert` end to end, without torch: torchvision GoogLeNet weights (random values
in torchvision's names and shapes, written as safetensors) converted, localized with
ImageNet class names, and fine-tuned from as googlenet_gap's backbone."""

import json
import os

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from cam_jax import checkpoints
from cam_jax import convert as convert_lib
from cam_jax import localize
from cam_jax import train
from cam_jax.data import conventions
from cam_jax.pretrained import imagenet
from configs import alexnet_gap as alexnet_gap_config
from configs import googlenet_gap as googlenet_gap_config
from configs import common
from tests.pretrained import test_weights


@pytest.fixture(scope='module')
def googlenet_file(tmp_path_factory):
  """torchvision googlenet's state_dict (auxiliary heads included), He-scaled values."""
  rng = np.random.default_rng(0)
  tensors = {}
  for name, shape in test_weights._torchvision_shapes('googlenet').items():  # pylint: disable=protected-access
    if name.endswith('num_batches_tracked'):
      continue  # int64 counters: safetensors here writes float32 only
    if name.endswith('running_var') or name.endswith('bn.weight'):
      value = rng.uniform(0.5, 1.5, shape)
    elif len(shape) > 1:
      value = rng.normal(0, np.sqrt(2 / np.prod(shape[1:])), shape)
    else:
      value = rng.normal(0, 0.1, shape)
    tensors[name] = value.astype(np.float32)
  path = str(tmp_path_factory.mktemp('tv') / 'googlenet.safetensors')
  test_weights.write_safetensors(path, tensors)
  return path, tensors


@pytest.fixture(scope='module')
def converted(googlenet_file, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('converted') / 'googlenet_tv')
  meta = convert_lib.convert('googlenet', googlenet_file[0], out)
  return out, meta


def test_converted_checkpoint_records_its_convention_and_names(converted):
  out, meta = converted
  assert meta['model'] == 'googlenet' and meta['model_kwargs'] == {'variant': 'torchvision'}
  assert meta['num_classes'] == 1000 and meta['class_names'][:2] == ['tench', 'goldfish']
  assert conventions.from_meta(meta['input']).name == 'inception'
  assert any(k.startswith('aux1.') for k in meta['pretrained']['unused'])
  assert meta['pretrained']['fresh'] == []
  with pytest.raises(FileExistsError):  # never overwritten
    convert_lib.convert('googlenet', meta['pretrained']['file'], out)
  # A converted checkpoint is not a run to resume.
  config = common.get_network_config('googlenet', None, variant='torchvision')
  with pytest.raises(ValueError, match='holds converted weights'):
    with checkpoints.checkpoint_manager(out, config) as manager:
      checkpoints.restore_checkpoint(manager, None, {'resume': {}})


def test_localize_with_converted_checkpoint_names_imagenet_classes(converted, tmp_path):
  out, _ = converted
  images = tmp_path / 'images'
  images.mkdir()
  rng = np.random.default_rng(1)
  for i, size in enumerate(((300, 200), (180, 240))):
    Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), np.uint8)).save(images / f'{i}.jpg')
  # Any config: the network, its classes and its input convention come from the checkpoint.
  config = googlenet_gap_config.get_config()
  config.eval.batch_size = 8
  config.eval.top_k = 3
  summary = localize.localize(config, str(tmp_path), str(images), checkpoint=out,
                              output_dir=str(tmp_path / 'loc'))
  assert summary.written == 2
  with open(tmp_path / 'loc' / localize.PREDICTIONS, encoding='utf-8') as f:
    records = [json.loads(line) for line in f]
  names = imagenet.class_names()
  for record in records:
    assert [p['name'] for p in record['top_k']] == [names[p['class']] for p in record['top_k']]


def test_localize_refuses_a_contradicting_convention(converted, tmp_path):
  config = googlenet_gap_config.get_config()
  config.data.input_convention = 'caffe_googlenet'
  with pytest.raises(ValueError, match="input_convention='caffe_googlenet', but .* was "
                     'trained with inception'):
    localize.localize(config, str(tmp_path), __file__, checkpoint=converted[0])


def _runlocal(module, data_dir: str, pretrained: str, variant: str):
  config = module.get_config('runlocal')
  config.data.builder_config = 'tiny'
  config.data.data_dir = data_dir
  config.model.kwargs.variant = variant
  config.init_from.pretrained = pretrained
  return config


def test_init_from_pretrained_loads_the_googlenet_backbone(googlenet_file, tiny_data_dir):
  path, tensors = googlenet_file
  config = _runlocal(googlenet_gap_config, tiny_data_dir, path, 'torchvision')
  resolved, pretrained = train.starting_weights(config)
  assert conventions.from_config(resolved.data).name == 'inception'
  model = nnx.merge(*train.create_train_state(resolved, 4, pretrained))[0]
  kernel = np.asarray(model.trunk.blocks[6].conv5x5.conv.kernel[...])  # inception4e.branch3.1
  np.testing.assert_array_equal(
      kernel, tensors['inception4e.branch3.1.conv.weight'].transpose(2, 3, 1, 0))
  assert model.head.kernel[...].shape == (1024, 4)  # fresh, for the 4 synthetic classes

  # The wrong trunk variant is named, not a wall of shape errors.
  config.model.kwargs.variant = 'caffe'
  with pytest.raises(ValueError, match="need the trunk variant 'torchvision'"):
    train.starting_weights(config)


def test_fine_tune_from_a_pretrained_backbone(tiny_data_dir, tmp_path):
  """The whole run (AlexNet-GAP: GoogLeNet's compile is slow on a CPU): the backbone of a
  torchvision file, its convention in the data pipeline and in the checkpoints."""
  rng = np.random.default_rng(2)
  shapes = test_weights._torchvision_shapes('alexnet')  # pylint: disable=protected-access
  tensors = {k: rng.normal(0, 0.05, s).astype(np.float32) for k, s in shapes.items()
             if k.startswith('features.')}  # a backbone alone is enough for a GAP network
  path = str(tmp_path / 'alexnet_features.safetensors')
  test_weights.write_safetensors(path, tensors)
  config = _runlocal(alexnet_gap_config, tiny_data_dir, path, 'torchvision')
  config.total_steps = 2
  config.checkpoint_every = 2
  config.eval.num_examples = 8
  config.figures.enabled = False
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert np.isfinite(results['cls_top1_error'])
  meta, _ = checkpoints.read_meta_at(str(tmp_path / 'run'))
  assert conventions.from_meta(meta['input']).name == 'imagenet'
  assert meta['resume']['input']['name'] == 'imagenet'
