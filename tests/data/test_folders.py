"""Folder-per-class datasets read in place (data.name='folders')."""

import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from cam_jax import data as data_lib
from cam_jax.data import folders
from cam_jax.data import images
from cam_jax.data import novel_shapes
from cam_jax.data import pipeline


def _config(root, **kwargs):
  cfg = ml_collections.ConfigDict({'name': 'folders', 'folders': {
      'root': str(root), 'random_splits': None, 'split_seed': 0, 'boxes_file': None}})
  cfg.folders.update(kwargs)
  return cfg


def _image(path, hw=(10, 12), value=0):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full((*hw, 3), value, np.uint8)).save(path)


def _tree(root):
  """train: cat (2 images, one in a sub-folder), dog (1); test: dog (1), eel (1)."""
  _image(root / 'train' / 'cat' / 'b.png', value=10)
  _image(root / 'train' / 'cat' / 'sub' / 'a.JPG', value=20)
  _image(root / 'train' / 'dog' / 'c.jpeg', value=30)
  (root / 'train' / 'dog' / 'notes.txt').write_text('not an image')
  _image(root / 'train' / 'dog' / '.hidden.png')
  _image(root / 'test' / 'dog' / 'd.png', value=40)
  _image(root / 'test' / 'eel' / 'e.png', value=50)


def test_split_folders_share_classes_and_labels(tmp_path):
  _tree(tmp_path)
  source, info = data_lib.load_source(_config(tmp_path), 'train')
  assert info.class_names == ('cat', 'dog', 'eel') and info.num_classes == 3
  assert not info.has_masks
  assert source.image_ids == ['train/cat/b.png', 'train/cat/sub/a.JPG', 'train/dog/c.jpeg']
  assert [int(source[i]['label']) for i in range(3)] == [0, 0, 1]
  test, _ = data_lib.load_source(_config(tmp_path), 'test')
  assert [(test[i]['file_name'], int(test[i]['label'])) for i in range(2)] == [
      ('test/dog/d.png', 1), ('test/eel/e.png', 2)]
  ex = source[2]
  assert ex['boxes'].shape == (0, 4)
  assert pipeline.decode(ex, 2)[0, 0, 0] == 30


def test_boxes_file_gives_boxes_checked_against_the_image(tmp_path):
  _tree(tmp_path)
  boxes = tmp_path / 'boxes.txt'
  boxes.write_text('train/cat/b.png,1,2,5,6\ntrain/cat/b.png,0,0,11,20\n'
                   'train/dog/c.jpeg,3,3,40,4\n')
  source, _ = data_lib.load_source(_config(tmp_path, boxes_file=str(boxes)), 'train')
  # The second box overhangs (20 > 9): clipped to the 12×10 image.
  np.testing.assert_array_equal(source[0]['boxes'], [[1, 2, 5, 6], [0, 0, 11, 9]])
  assert source[1]['boxes'].shape == (0, 4)
  np.testing.assert_array_equal(source[2]['boxes'], [[3, 3, 11, 4]])
  boxes.write_text('train/cat/b.png,20,2,25,6\n')
  source, _ = data_lib.load_source(_config(tmp_path, boxes_file=str(boxes)), 'train')
  with pytest.raises(images.BadBoxError, match=r'b.png .*outside the 12×10 image'):
    source[0]  # pylint: disable=pointless-statement


def test_random_splits_are_disjoint_fixed_and_per_class(tmp_path):
  for c in ('ant', 'bee'):
    for i in range(10):
      _image(tmp_path / c / f'{i}.png')
  cfg = _config(tmp_path, random_splits='train=0.6,validation=0.2,test=0.2')
  ids = {s: data_lib.load_source(cfg, s)[0].image_ids for s in ('train', 'validation', 'test')}
  assert [len(v) for v in ids.values()] == [12, 4, 4]
  every = sum(ids.values(), [])
  assert sorted(every) == sorted(f'{c}/{i}.png' for c in ('ant', 'bee') for i in range(10))
  assert ids == {s: data_lib.load_source(cfg, s)[0].image_ids for s in ids}  # fixed
  assert sum(i.startswith('ant/') for i in ids['test']) == 2
  other = _config(tmp_path, random_splits='train=0.6,validation=0.2,test=0.2', split_seed=1)
  assert data_lib.load_source(other, 'test')[0].image_ids != ids['test']


@pytest.mark.parametrize('spec, match', [
    ('train=0.5,test=0.4', 'sum to 0.9'), ('train=0.5,train=0.5', 'distinct'),
    ('train:0.5,test=0.5', 'expected'), ('train=0,test=1', 'expected')])
def test_bad_random_splits_are_named(tmp_path, spec, match):
  _image(tmp_path / 'ant' / '0.png')
  with pytest.raises(ValueError, match=match):
    data_lib.load_source(_config(tmp_path, random_splits=spec), 'train')


def test_errors_name_the_folder_or_file(tmp_path):
  with pytest.raises(ValueError, match='folders.root is not set'):
    data_lib.load_source(_config(''), 'train')
  with pytest.raises(FileNotFoundError, match='not a folder'):
    data_lib.load_source(_config(tmp_path / 'nowhere'), 'train')
  _tree(tmp_path)
  with pytest.raises(FileNotFoundError,
                     match=r'validation not found.*split folders \(test, train\)'):
    data_lib.load_source(_config(tmp_path), 'validation')
  (tmp_path / 'empty' / 'cat').mkdir(parents=True)
  with pytest.raises(ValueError, match="split 'empty' .* has no images"):
    data_lib.load_source(_config(tmp_path), 'empty')
  source, _ = data_lib.load_source(_config(tmp_path), 'train')
  os.remove(tmp_path / 'train' / 'dog' / 'c.jpeg')
  with pytest.raises(FileNotFoundError, match='c.jpeg not found'):
    source[2]  # pylint: disable=pointless-statement
  (tmp_path / 'train' / 'dog' / 'c.jpeg').write_bytes(b'not a jpeg')
  with pytest.raises(images.BadImageError, match='c.jpeg'):
    pipeline.decode(source[2], 2)


def test_a_root_of_non_images_fails_when_loaded(tmp_path):
  (tmp_path / 'train' / 'cat').mkdir(parents=True)
  (tmp_path / 'train' / 'cat' / 'x.png').write_bytes(b'garbage')
  with pytest.raises(images.BadImageError, match='x.png'):
    data_lib.load_source(_config(tmp_path), 'train')


def test_novel_shapes_are_a_folder_dataset_with_tight_boxes(tmp_path):
  counts = novel_shapes.write(str(tmp_path), per_class={'train': 2, 'test': 1}, image_size=32)
  assert counts == {'train': 12, 'test': 6}
  cfg = _config(tmp_path, boxes_file=str(tmp_path / 'boxes.txt'))
  source, info = data_lib.load_source(cfg, 'train')
  assert info.class_names == tuple(sorted(novel_shapes.CLASS_NAMES))
  for i in range(len(source)):
    ex = source[i]
    assert ex['boxes'].shape == (1, 4)
    x0, y0, x1, y1 = ex['boxes'][0]
    assert 0 <= x0 < x1 < 32 and 0 <= y0 < y1 < 32
  # Deterministic.
  again = tmp_path / 'again'
  novel_shapes.write(str(again), per_class={'train': 2, 'test': 1}, image_size=32)
  assert (again / 'boxes.txt').read_text() == (tmp_path / 'boxes.txt').read_text()
  assert folders.list_class_images(str(tmp_path / 'train' / 'arrow')) == ['00000.png',
                                                                          '00001.png']
