"""cub2011_loc: prepared from fake archives in the official layout, read back and compared
with what the fake drew (tests/data/fake_cub.py), and every kind of bad input refused."""

import io
import logging
import pathlib
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from cam_jax import data
from cam_jax.data import cub, images
from tests.data import fake_cub


def _builder(data_dir, config=None, **kwargs):
  return cub.Cub2011Loc(data_dir=str(data_dir), file_format='array_record', config=config,
                        **kwargs)


def _prepare(data_dir, manual_dir, config=None, **kwargs):
  builder = _builder(data_dir, config, **kwargs)
  data.prepare(builder, str(manual_dir))
  return builder


def _prepare_fails(tmp_path, config, error, match=None, manual_dir=None):
  """Preparing from tmp_path/manual (or `manual_dir`) raises `error`, and nothing is left
  in the data dir; the exception info, for more checks."""
  builder = _builder(tmp_path / 'tfds', config)
  with pytest.raises(error, match=match) as e:
    data.prepare(builder, str(manual_dir or tmp_path / 'manual'))
  _assert_nothing_written(builder, tmp_path / 'tfds')
  return e


def _records(builder, split):
  decoders = {k: tfds.decode.SkipDecoding() for k in ('image', 'segmentation_mask')
              if k in builder.info.features}
  source = builder.as_data_source(split, decoders=decoders)
  return [source[i] for i in range(len(source))]


def _text(value):
  return value.decode() if isinstance(value, bytes) else str(value)


def _check_split(builder, fake, split, with_mask, skipped=()):
  ids = [i for i in fake['splits'][split] if i not in skipped]
  records = _records(builder, split)
  assert builder.info.splits[split].num_examples == len(ids)
  # Image id order, although the archive holds the images shuffled.
  assert [_text(r['file_name']) for r in records] == [fake['images'][i]['file_name']
                                                       for i in ids]
  for record, image_id in zip(records, ids):
    want = fake['images'][image_id]
    assert int(record['label']) == want['label'], image_id
    boxes = np.asarray(record['boxes'])
    assert boxes.shape == (1, 4) and boxes.dtype == np.int32
    np.testing.assert_array_equal(boxes[0], want['box'], err_msg=str(image_id))
    assert tuple(np.asarray(record['image_hw'])) == want['image_hw']
    # RGB and grayscale JPEGs are stored byte for byte.
    assert record['image'] == want['encoded'], image_id
    pixels = images.decode_image(record['image'], want['file_name'])
    assert pixels.shape == want['image_hw'] + (3,)
    x0, y0, x1, y1 = want['box']
    inside = np.zeros(want['image_hw'], bool)
    inside[y0:y1 + 1, x0:x1 + 1] = True
    # The drawn rectangle is where the box says (JPEG blurs its edges a little).
    assert pixels[inside].mean() > 140 and pixels[~inside].mean() < 90, image_id
    if with_mask:
      mask = Image.open(io.BytesIO(record['segmentation_mask']))
      assert mask.format == 'PNG' and mask.mode == 'L'
      np.testing.assert_array_equal(np.asarray(mask), want['mask'], err_msg=str(image_id))
    else:
      assert 'segmentation_mask' not in record


def _assert_nothing_written(builder, data_dir):
  """Neither this config's version folder nor any TFDS `incomplete.*` folder is left."""
  assert not builder.is_prepared()
  assert not pathlib.Path(builder.data_path).exists()
  left = [p for p in pathlib.Path(data_dir).rglob('*') if 'incomplete' in p.name]
  assert not left, left


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """The segmentation config prepared from fake archives, once for the module."""
  root = tmp_path_factory.mktemp('cub')
  fake = fake_cub.write_fake_cub(str(root / 'manual'))
  builder = _prepare(root / 'tfds', root / 'manual', 'segmentation')
  return builder, fake, root / 'tfds'


def test_fake_archives_have_the_official_layout(tmp_path):
  fake = fake_cub.write_fake_cub(str(tmp_path))
  with tarfile.open(fake['cub']) as tar:
    names = tar.getnames()
  assert 'CUB_200_2011/images.txt' in names and 'CUB_200_2011/bounding_boxes.txt' in names
  assert f'CUB_200_2011/images/{fake["images"][1]["file_name"]}' in names
  with tarfile.open(fake['segmentations']) as tar:
    assert f'segmentations/{fake["images"][1]["file_name"][:-4]}.png' in tar.getnames()
  # 12 images, ids 3, 6, 9, 12 in test; one box per line, CUB's x y width height.
  assert fake['splits'] == {'train': [1, 2, 4, 5, 7, 8, 10, 11], 'test': [3, 6, 9, 12]}
  x, y, w, h = map(float, fake['images'][1]['box_line'].split()[1:])
  assert fake['images'][1]['box'] == (x, y, x + w - 1, y + h - 1)


def test_segmentation_config_from_archives(prepared):
  builder, fake, _ = prepared
  assert builder.is_prepared()
  for split in ('train', 'test'):
    _check_split(builder, fake, split, with_mask=True)


def test_class_names_and_readable_names_are_saved(prepared):
  builder, fake, data_dir = prepared
  assert fake['class_names'] == ['001.Black_footed_Albatross', '002.Laysan_Albatross',
                                 '003.Sooty_Albatross']
  # A fresh builder reads them back from the prepared files.
  reloaded = _builder(data_dir, 'segmentation')
  for info in (builder.info, reloaded.info):
    assert info.features['label'].names == fake['class_names']
    assert info.metadata['class_names'] == ['Black footed Albatross', 'Laysan Albatross',
                                            'Sooty Albatross']
  _check_split(reloaded, fake, 'test', with_mask=True)


def test_default_config_needs_no_segmentations(tmp_path):
  fake = fake_cub.write_fake_cub(str(tmp_path / 'manual'), with_segmentations=False)
  builder = _prepare(tmp_path / 'tfds', tmp_path / 'manual')
  assert 'segmentation_mask' not in builder.info.features
  for split in ('train', 'test'):
    _check_split(builder, fake, split, with_mask=False)
  # The segmentation config names the file it misses, and where it looked.
  e = _prepare_fails(tmp_path, 'segmentation', FileNotFoundError, 'segmentations.tgz')
  assert str(tmp_path / 'manual') in str(e.value)


def test_extracted_folders(tmp_path):
  fake = fake_cub.write_fake_cub(str(tmp_path / 'manual'), extracted=True)
  assert pathlib.Path(fake['cub']).is_dir() and pathlib.Path(fake['segmentations']).is_dir()
  builder = _prepare(tmp_path / 'tfds', tmp_path / 'manual', 'segmentation')
  for split in ('train', 'test'):
    _check_split(builder, fake, split, with_mask=True)
  assert builder.info.metadata['class_names'] == fake['readable_names']


def test_missing_archive_names_file_and_folder(tmp_path):
  manual = tmp_path / 'manual'
  fake = fake_cub.write_fake_cub(str(manual))
  pathlib.Path(fake['cub']).unlink()
  e = _prepare_fails(tmp_path, None, FileNotFoundError, 'CUB_200_2011.tgz')
  assert str(manual) in str(e.value)
  # A manual folder that does not exist at all.
  e = _prepare_fails(tmp_path, None, FileNotFoundError, 'CUB_200_2011.tgz',
                     manual_dir=tmp_path / 'nowhere')
  assert str(tmp_path / 'nowhere') in str(e.value)


def test_truncated_image_raises_naming_it(tmp_path):
  fake = fake_cub.write_fake_cub(str(tmp_path / 'manual'), truncated=5)
  _prepare_fails(tmp_path, 'segmentation', images.BadImageError,
                 fake['images'][5]['file_name'])


def test_skip_bad_images_prepares_the_rest(tmp_path, caplog):
  fake = fake_cub.write_fake_cub(str(tmp_path / 'manual'), truncated=5)
  with caplog.at_level(logging.WARNING):
    builder = _prepare(tmp_path / 'tfds', tmp_path / 'manual', 'segmentation',
                       skip_bad_images=True)
  assert fake['images'][5]['file_name'] in caplog.text
  assert builder.is_prepared()
  _check_split(builder, fake, 'train', with_mask=True, skipped=(5,))
  _check_split(builder, fake, 'test', with_mask=True)


def test_inverted_box_is_rejected_naming_the_file(tmp_path):
  fake = fake_cub.write_fake_cub(str(tmp_path / 'manual'), inverted_box=7)
  assert fake['images'][7]['box'] is None
  _prepare_fails(tmp_path, None, images.BadBoxError, fake['images'][7]['file_name'])


def test_overhanging_box_is_clipped(tmp_path, caplog):
  fake = fake_cub.write_fake_cub(str(tmp_path / 'manual'), overhanging_box=4)
  want = fake['images'][4]
  # Image 4 is 40 high and 30 wide: the written box ends at column 30 + 4 = 34, the
  # image's last column is 29.
  assert want['image_hw'] == (40, 30)
  x, _, w, _ = map(float, want['box_line'].split()[1:])
  assert x + w - 1 == 34 and want['box'][2] == 29
  with caplog.at_level(logging.WARNING):
    builder = _prepare(tmp_path / 'tfds', tmp_path / 'manual')
  assert 'clipped' in caplog.text and want['file_name'] in caplog.text
  _check_split(builder, fake, 'train', with_mask=False)


@pytest.mark.parametrize('text_file', ['image_class_labels.txt', 'train_test_split.txt',
                                       'bounding_boxes.txt', 'images.txt'])
def test_missing_row_names_the_text_file_and_id(tmp_path, text_file):
  fake_cub.write_fake_cub(str(tmp_path / 'manual'), drop_row=(text_file, 8))
  e = _prepare_fails(tmp_path, None, ValueError)
  assert f'{text_file} ' in str(e.value) and 'image id 8 ' in str(e.value), e.value


@pytest.mark.parametrize('extracted', [False, True])
def test_missing_image_file_is_named(tmp_path, extracted):
  fake = fake_cub.write_fake_cub(str(tmp_path / 'manual'), missing_image=4, extracted=extracted)
  _prepare_fails(tmp_path, None, FileNotFoundError, fake['images'][4]['file_name'])


def test_mask_of_another_size_is_rejected_naming_it(tmp_path):
  fake = fake_cub.write_fake_cub(str(tmp_path / 'manual'), wrong_mask_size=2)
  mask_file = fake['images'][2]['file_name'][:-len('.jpg')] + '.png'
  _prepare_fails(tmp_path, 'segmentation', ValueError, mask_file)


def test_readable_name():
  assert cub.readable_name('001.Black_footed_Albatross') == 'Black footed Albatross'
  assert cub.readable_name('200.Common_Yellowthroat') == 'Common Yellowthroat'
