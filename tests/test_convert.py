"""`cam_jax.convert` and `init_from.pretrained` end to end, without torch: torchvision
AlexNet's backbone (random values in torchvision's names and shapes, written as
safetensors) converted, localized with ImageNet class names, and fine-tuned from.
(GoogLeNet's maps are checked at full size in tests/pretrained; its conversion against
torch in benchmarks/pretrained_parity.py. Its compile is too slow for this suite.)"""

import json
import os

import numpy as np
import pytest
from flax import nnx
from PIL import Image

import cam_jax
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
def alexnet_file(tmp_path_factory):
  """torchvision alexnet's backbone (`features.*`, He-scaled random values) as
  safetensors: what a GAP network takes of torchvision's file."""
  rng = np.random.default_rng(0)
  tensors = {}
  for name, shape in test_weights._torchvision_shapes('alexnet').items():  # pylint: disable=protected-access
    if name.startswith('features.'):
      scale = np.sqrt(2 / np.prod(shape[1:])) if len(shape) > 1 else 0.1
      tensors[name] = rng.normal(0, scale, shape).astype(np.float32)
  path = str(tmp_path_factory.mktemp('tv') / 'alexnet_features.safetensors')
  test_weights.write_safetensors(path, tensors)
  return path, tensors


@pytest.fixture(scope='module')
def converted(alexnet_file, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('converted') / 'alexnet_gap_tv')
  meta = convert_lib.convert('alexnet_gap', alexnet_file[0], out)
  return out, meta


def test_converted_checkpoint_records_its_convention_and_names(converted):
  out, meta = converted
  assert meta['model'] == 'alexnet_gap' and meta['model_kwargs'] == {'variant': 'torchvision'}
  assert meta['num_classes'] == 1000 and meta['class_names'][:2] == ['tench', 'goldfish']
  assert conventions.from_meta(meta['input']).name == 'imagenet'
  assert meta['pretrained']['unused'] == []
  assert {k.split('/')[0] for k in meta['pretrained']['fresh']} == {'cam_conv', 'head'}
  with pytest.raises(FileExistsError):  # never overwritten
    convert_lib.convert('alexnet_gap', meta['pretrained']['file'], out)
  # A converted checkpoint is not a run to resume.
  config = common.get_network_config('alexnet_gap', None, variant='torchvision')
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
  config.data.image_size = 99
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
  # The Python API on the same checkpoint and config: the same predictions; with no
  # config, the network's own input size and convention from the checkpoint.
  [again] = cam_jax.load(out, config).predict(str(images / '0.jpg'))
  assert again.record()['top_k'] == [
      {**p, 'score': pytest.approx(p['score'], rel=1e-6)} for p in records[0]['top_k']]
  bare = cam_jax.load(out)
  assert bare.config.data.image_size == 224 and bare.convention.name == 'imagenet'
  assert bare.class_names == list(names)


def test_localize_refuses_a_contradicting_convention(converted, tmp_path):
  config = googlenet_gap_config.get_config()
  config.data.input_convention = 'caffe_googlenet'
  with pytest.raises(ValueError, match="input_convention='caffe_googlenet', but .* was "
                     'trained with imagenet'):
    localize.localize(config, str(tmp_path), __file__, checkpoint=converted[0])


def _runlocal(module, data_dir: str, pretrained: str, variant: str):
  config = module.get_config('runlocal')
  config.data.builder_config = 'tiny'
  config.data.data_dir = data_dir
  config.model.kwargs.variant = variant
  config.init_from.pretrained = pretrained
  return config


def test_fine_tune_from_a_pretrained_backbone(alexnet_file, tiny_data_dir, tmp_path):
  """`init_from.pretrained`: the backbone of a torchvision file loads (the added layers
  fresh), its convention reaches the data pipeline and the checkpoints."""
  path, tensors = alexnet_file
  config = alexnet_gap_config.get_config('runlocal')
  config.data.builder_config = 'tiny'
  config.data.data_dir = tiny_data_dir
  config.model.kwargs.variant = 'torchvision'
  config.init_from.pretrained = path
  config.total_steps = 2
  config.checkpoint_every = 2
  config.eval.num_examples = 8
  config.figures.enabled = False

  resolved, pretrained = train.starting_weights(config)
  assert conventions.from_config(resolved.data).name == 'imagenet'
  model = nnx.merge(*train.create_train_state(resolved, 4, pretrained))[0]
  np.testing.assert_array_equal(np.asarray(model.trunk.convs[3].conv.kernel[...]),
                                tensors['features.8.weight'].transpose(2, 3, 1, 0))
  assert model.head.kernel[...].shape == (1024, 4)  # fresh, for the 4 synthetic classes

  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert np.isfinite(results['cls_top1_error'])
  meta, _ = checkpoints.read_meta_at(str(tmp_path / 'run'))
  assert conventions.from_meta(meta['input']).name == 'imagenet'
  assert meta['resume']['input']['name'] == 'imagenet'

  # The wrong trunk variant is named, not a wall of shape errors.
  config.model.kwargs.variant = 'caffe'
  with pytest.raises(ValueError, match="need the trunk variant 'torchvision'"):
    train.starting_weights(config)
