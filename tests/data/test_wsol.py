"""The 'wsol' source: wsolevaluation's metadata layout read in place, on fake trees.

Expected values are what tests/data/fake_wsol.py wrote, never what the source computes.
"""

import os
import pickle
import re

import numpy as np
import pytest
from PIL import Image

from cam_jax.data import images
from cam_jax.data import wsol
from tests.data import fake_wsol


@pytest.fixture(scope='module')
def cub(tmp_path_factory):
  return fake_wsol.write_fake_wsol(str(tmp_path_factory.mktemp('cub')), 'CUB')


@pytest.fixture(scope='module')
def openimages(tmp_path_factory):
  return fake_wsol.write_fake_wsol(str(tmp_path_factory.mktemp('oi')), 'OpenImages')


@pytest.fixture
def fresh_cub(tmp_path):
  """A tree of its own, for the tests that spoil a file."""
  return fake_wsol.write_fake_wsol(str(tmp_path), 'CUB')


def _load(expected, split='test', **overrides):
  return wsol.load_source(fake_wsol.data_config(expected, **overrides), split)


def _meta(expected, split, name):
  return os.path.join(expected['metadata_root'], expected['dataset'], split, name)


def _edit(path, edit):
  """Rewrites a metadata file: `edit(lines) -> lines`."""
  with open(path) as f:
    lines = f.read().splitlines()
  with open(path, 'w') as f:
    f.write(''.join(line + '\n' for line in edit(lines)))


def _mask_pixels(mask):
  assert mask.dtype == np.uint8 and mask.ndim == 2  # 0/255 pixels
  return mask


# ---------------------------------------------------------------------------
# What a source yields
# ---------------------------------------------------------------------------

def test_test_split_examples_match_what_was_written(cub):
  exp = cub['splits']['test']
  source, info = _load(cub, 'test')
  assert len(source) == 4
  for i in range(len(source)):
    ex = source[i]
    assert set(ex) == {'image', 'label', 'boxes', 'file_name'}
    assert ex['file_name'] == exp['image_ids'][i]
    assert ex['label'] == exp['labels'][i] and np.issubdtype(type(ex['label']), np.integer)
    assert ex['boxes'].dtype == np.int32
    np.testing.assert_array_equal(ex['boxes'], np.array(exp['boxes'][i]).reshape(-1, 4))
    with open(os.path.join(cub['image_root'], 'CUB', exp['image_ids'][i]), 'rb') as f:
      assert ex['image'] == f.read()
    pixels = images.decode_image(ex['image'], ex['file_name'])
    assert pixels.shape == exp['sizes_hw'][i] + (3,)
    if exp['formats'][i] == 'png':
      np.testing.assert_array_equal(pixels, exp['pixels'][i])
    else:  # JPEG of a smooth image: close.
      assert np.abs(pixels.astype(int) - exp['pixels'][i]).mean() < 4
  assert info.name == 'wsol/CUB' and not info.has_masks
  # No names file: names are the label numbers; 3 classes although test uses only 0 and 1.
  assert info.num_classes == 3 and info.class_names == ('0', '1', '2')
  assert 'CUB' in repr(source) and 'test' in repr(source) and 'images=4' in repr(source)


def test_every_box_of_a_multi_box_image_in_file_order(cub):
  source, _ = _load(cub, 'val')
  exp = cub['splits']['val']
  h, w = exp['sizes_hw'][1]
  # Written by fake_wsol for image 1: its own box, the whole image, a small box.
  expected = [[1, 2, w - 3, h - 3], [0, 0, w - 1, h - 1], [2, 2, 5, 4]]
  np.testing.assert_array_equal(source[1]['boxes'], expected)
  assert source[1]['file_name'] == exp['image_ids'][1]


def test_class_names_from_file_and_num_classes_shared_by_all_splits(cub):
  for split in ('train', 'val', 'test'):
    _, info = _load(cub, split, class_names_file=cub['class_names_file'])
    assert info.class_names == ('species 0', 'species 1', 'species 2')
    assert info.num_classes == 3
    _, info = _load(cub, split)
    assert info.num_classes == 3, split


def test_train_split_without_localization_has_no_boxes(cub):
  assert not os.path.exists(_meta(cub, 'train', 'localization.txt'))
  source, _ = _load(cub, 'train')
  labels = [source[i]['label'] for i in range(len(source))]
  assert labels == cub['splits']['train']['labels'] == [0, 1, 2, 0]
  for i in range(len(source)):
    assert source[i]['boxes'].shape == (0, 4)


def test_train_split_with_localization_reads_its_boxes(tmp_path):
  # wsolevaluation's CUB train folder has a localization.txt.
  exp = fake_wsol.write_fake_wsol(str(tmp_path), 'CUB', train_localization=True)
  source, _ = _load(exp, 'train')
  for i in range(len(source)):
    np.testing.assert_array_equal(source[i]['boxes'], exp['splits']['train']['boxes'][i])


def test_ilsvrc_ids_with_sub_folders(tmp_path):
  exp = fake_wsol.write_fake_wsol(str(tmp_path), 'ILSVRC', image_format='png')
  for split, first in (('val', 'val2/0/0.png'), ('test', 'val/ILSVRC2012_val_00000001.PNG')):
    source, info = _load(exp, split)
    assert source[0]['file_name'] == first
    np.testing.assert_array_equal(images.decode_image(source[0]['image'], first),
                                  exp['splits'][split]['pixels'][0])
    assert info.name == 'wsol/ILSVRC'


def test_openimages_union_and_ignore_masks(openimages):
  exp = openimages['splits']['test']
  assert not os.path.exists(_meta(openimages, 'test', 'image_sizes.txt'))
  source, info = _load(openimages, 'test')
  assert info.has_masks and info.name == 'wsol/OpenImages'
  for i in range(len(source)):
    ex = source[i]
    assert set(ex) == {'image', 'label', 'boxes', 'file_name', 'segmentation_mask',
                       'ignore_mask'}
    assert ex['boxes'].shape == (0, 4)
    np.testing.assert_array_equal(_mask_pixels(ex['segmentation_mask']), exp['masks'][i])
    np.testing.assert_array_equal(_mask_pixels(ex['ignore_mask']), exp['ignore'][i])
  # Hand-checked values of image 0 (h×w = 22×31): instance rows 2-11, columns 3-15; the
  # ignore region is columns 0-5 minus the instance.
  seg, ignore = (_mask_pixels(source[0][k]) for k in ('segmentation_mask', 'ignore_mask'))
  assert seg.shape == (22, 31) and seg[2, 3] == 255 and seg[11, 15] == 255
  assert seg[1, 3] == 0 and seg[2, 16] == 0 and seg.sum() == 255 * 10 * 13
  assert ignore[0, 0] == 255 and ignore[2, 3] == 0 and ignore[2, 2] == 255
  assert ignore.sum() == 255 * (22 * 6 - 10 * 3)
  # Image 1: three instances (one a 1-bit PNG), no ignore mask: all zeros.
  assert _mask_pixels(source[1]['ignore_mask']).max() == 0
  assert (_mask_pixels(source[1]['segmentation_mask']) == 255).sum() == (
      (exp['masks'][1] == 255).sum())


def test_openimages_train_split_without_localization_is_all_ignored(openimages):
  source, info = _load(openimages, 'train')
  assert info.num_classes == 3
  for i in range(len(source)):
    ex = source[i]
    hw = openimages['splits']['train']['sizes_hw'][i]
    assert set(ex) >= {'segmentation_mask', 'ignore_mask'}
    np.testing.assert_array_equal(_mask_pixels(ex['segmentation_mask']), np.zeros(hw))
    np.testing.assert_array_equal(_mask_pixels(ex['ignore_mask']), np.full(hw, 255))


def test_openimages_mask_at_another_resolution(tmp_path):
  exp = fake_wsol.write_fake_wsol(str(tmp_path), 'OpenImages')
  test = exp['splits']['test']
  mask_path = os.path.join(exp['image_root'], 'OpenImages', test['mask_files'][0][0])
  # Twice the image's size, as OpenImages V5 ships many: resized back, nearest neighbour.
  Image.fromarray(np.repeat(np.repeat(test['masks'][0], 2, 0), 2, 1)).save(mask_path)
  source, _ = _load(exp, 'test')
  np.testing.assert_array_equal(_mask_pixels(source[0]['segmentation_mask']), test['masks'][0])
  # Another aspect ratio: an error naming the mask file.
  Image.fromarray(np.zeros((22, 60), np.uint8)).save(mask_path)
  with pytest.raises(images.BadImageError, match=re.escape(test['mask_files'][0][0])):
    source[0]  # pylint: disable=pointless-statement


def test_pickle_round_trip(cub, openimages):
  for exp in (cub, openimages):
    source, _ = _load(exp, 'test')
    clone = pickle.loads(pickle.dumps(source))
    assert len(clone) == len(source)
    for i in range(len(source)):
      a, b = source[i], clone[i]
      assert a.keys() == b.keys()
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_index_out_of_range(cub):
  source, _ = _load(cub, 'test')
  with pytest.raises(IndexError):
    source[len(source)]  # pylint: disable=pointless-statement
  assert source[-1]['file_name'] == cub['splits']['test']['image_ids'][-1]


# ---------------------------------------------------------------------------
# Bad input: clear errors
# ---------------------------------------------------------------------------

def test_missing_metadata_file_names_the_path(fresh_cub):
  path = _meta(fresh_cub, 'test', 'image_sizes.txt')
  os.remove(path)
  with pytest.raises(FileNotFoundError, match=re.escape(path)):
    _load(fresh_cub, 'test')


def test_missing_split_folder_names_the_path(cub):
  with pytest.raises(FileNotFoundError, match='split folders present: test, train, val') as e:
    _load(cub, 'valid')
  assert os.path.join(cub['metadata_root'], 'CUB', 'valid') in str(e.value)


def test_unset_roots(cub):
  with pytest.raises(ValueError, match='metadata_root'):
    _load(cub, metadata_root=None)


def test_image_root_with_the_dataset_appended_says_how_ids_resolve(cub):
  with pytest.raises(FileNotFoundError, match='image_root/CUB/<image_id>'):
    _load(cub, image_root=os.path.join(cub['image_root'], 'CUB'))


@pytest.mark.parametrize('name,bad_line', [
    ('localization.txt', '{id},1,2,3'),       # a coordinate short
    ('localization.txt', '{id},1.5,2,8,9'),   # not an integer pixel corner
    ('class_labels.txt', '{id},bird'),
    ('image_sizes.txt', '{id},31'),
])
def test_malformed_line_names_file_and_line_number(fresh_cub, name, bad_line):
  path = _meta(fresh_cub, 'test', name)
  image_id = fresh_cub['splits']['test']['image_ids'][0]
  _edit(path, lambda lines: lines[:2] + [bad_line.format(id=image_id)] + lines[2:])
  with pytest.raises(ValueError, match=re.escape(f'{path}, line 3: expected')):
    _load(fresh_cub, 'test')


def test_image_missing_from_sizes_names_file_and_id(fresh_cub):
  path = _meta(fresh_cub, 'test', 'image_sizes.txt')
  missing = fresh_cub['splits']['test']['image_ids'][2]
  _edit(path, lambda lines: [line for line in lines if not line.startswith(missing)])
  with pytest.raises(ValueError, match=re.escape(f'{path} has no size for image {missing!r}')):
    _load(fresh_cub, 'test')


def test_image_without_boxes_in_a_test_split(fresh_cub):
  path = _meta(fresh_cub, 'test', 'localization.txt')
  missing = fresh_cub['splits']['test']['image_ids'][3]
  _edit(path, lambda lines: [line for line in lines if not line.startswith(missing)])
  with pytest.raises(ValueError, match=re.escape(f'has no box for image {missing!r}')):
    _load(fresh_cub, 'test')


def test_inverted_box_names_the_image(fresh_cub):
  path = _meta(fresh_cub, 'test', 'localization.txt')
  image_id = fresh_cub['splits']['test']['image_ids'][2]
  _edit(path, lambda lines: lines + [f'{image_id},9,1,4,5'])  # x0 > x1
  with pytest.raises(images.BadBoxError, match=re.escape(image_id)):
    _load(fresh_cub, 'test')


def test_overhanging_box_is_clipped(fresh_cub):
  exp = fresh_cub['splits']['test']
  h, w = exp['sizes_hw'][0]
  _edit(_meta(fresh_cub, 'test', 'localization.txt'),
        lambda lines: lines + [f'{exp["image_ids"][0]},-3,2,{w + 4},{h}'])
  source, _ = _load(fresh_cub, 'test')
  np.testing.assert_array_equal(source[0]['boxes'],
                                exp['boxes'][0] + [[0, 2, w - 1, h - 1]])


@pytest.mark.parametrize('label', [-1, 3])
def test_label_out_of_range(fresh_cub, label):
  path = _meta(fresh_cub, 'test', 'class_labels.txt')
  _edit(path, lambda lines: lines[:-1] + [lines[-1].rsplit(',', 1)[0] + f',{label}'])
  with pytest.raises(ValueError, match=re.escape(path)):
    _load(fresh_cub, 'test', class_names_file=fresh_cub['class_names_file'])


def test_label_beyond_the_names_file(cub, tmp_path):
  names = tmp_path / 'two_names.txt'
  names.write_text('a\nb\n')
  with pytest.raises(ValueError, match=r'has label 2, outside \[0, 2\)'):
    _load(cub, 'train', class_names_file=str(names))


def test_duplicate_image_id(fresh_cub):
  path = _meta(fresh_cub, 'test', 'image_ids.txt')
  _edit(path, lambda lines: lines + lines[:1])
  with pytest.raises(ValueError, match=re.escape(f'{path}, line 5: ') + '.* listed twice'):
    _load(fresh_cub, 'test')


def test_missing_image_file_is_named_at_access(fresh_cub):
  exp = fresh_cub['splits']['test']
  path = os.path.join(fresh_cub['image_root'], 'CUB', exp['image_ids'][2])
  os.remove(path)
  source, _ = _load(fresh_cub, 'test')  # Loading opens no image.
  assert source[1]['file_name'] == exp['image_ids'][1]
  with pytest.raises(FileNotFoundError, match=re.escape(path)):
    source[2]  # pylint: disable=pointless-statement


def test_image_of_another_size_than_image_sizes_txt(fresh_cub):
  exp = fresh_cub['splits']['test']
  path = os.path.join(fresh_cub['image_root'], 'CUB', exp['image_ids'][0])
  Image.fromarray(np.zeros((50, 60, 3), np.uint8)).save(path, format='PNG')
  source, _ = _load(fresh_cub, 'test')
  with pytest.raises(images.BadImageError, match='image_sizes.txt says'):
    source[0]  # pylint: disable=pointless-statement
