"""ilsvrc2012_loc: prepared from small fake archives in both annotation forms."""

import io
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from cam_jax import data
from configs import common
from cam_jax.data import images
from tests.data import fake_ilsvrc


def _prepare(tmp_path, form='loc', skip_bad_images=False, **fake_kwargs):
  manual = str(tmp_path / 'manual')
  expected = fake_ilsvrc.write_fake_ilsvrc(manual, form=form, **fake_kwargs)
  data_dir = str(tmp_path / 'tfds')
  builder = data.get_builder('ilsvrc2012_loc', data_dir=data_dir,
                             skip_bad_images=skip_bad_images)
  data.prepare(builder, manual)
  return data.get_builder('ilsvrc2012_loc', data_dir=data_dir), expected


def _examples(builder, split):
  source = builder.as_data_source(split, decoders={'image': tfds.decode.SkipDecoding()})
  return {source[i]['file_name'].decode(): source[i] for i in range(len(source))}


@pytest.mark.parametrize('form,extracted', [('loc', False), ('devkit', False), ('loc', True)])
def test_labels_boxes_and_class_order(tmp_path, form, extracted):
  builder, expected = _prepare(tmp_path, form, extracted=extracted)
  if extracted:  # Kaggle's layout: no tars at all
    assert not list((tmp_path / 'manual').glob('*.tar'))
  # Label = position in sorted synset order (n01440764 < n01443537 < n02102040).
  assert builder.info.features['label'].names == ['n01440764', 'n01443537', 'n02102040']
  info = data.builder_info('ilsvrc2012_loc', builder.info)
  assert info.class_names == ('tench', 'goldfish', 'English springer')
  assert builder.info.metadata['synset_words'][0] == 'tench, Tinca tinca'

  val = _examples(builder, 'validation')
  assert sorted(val) == sorted(expected['validation'])
  for name, (label, boxes, hw) in expected['validation'].items():
    ex = val[name]
    assert ex['label'] == label, name
    np.testing.assert_array_equal(ex['boxes'], boxes)  # every object, as annotated
    np.testing.assert_array_equal(ex['image_hw'], hw)
    assert images.decode_image(ex['image'], name).shape == (*hw, 3)
  # The image with three objects keeps all three.
  assert len(val['ILSVRC2012_val_00000003.JPEG']['boxes']) == 3
  assert [int(val[n]['label']) for n in sorted(val)] == [1, 2, 0, 0, 2, 1]

  train = _examples(builder, 'train')
  assert len(train) == 9
  for name, (label, boxes) in expected['train'].items():
    assert train[name]['label'] == label, name
    np.testing.assert_array_equal(train[name]['boxes'].reshape(-1, 4),
                                  np.reshape(boxes, (-1, 4)))


def test_cmyk_and_png_training_files_are_reencoded_as_rgb_jpeg(tmp_path):
  builder, _ = _prepare(tmp_path)
  train = _examples(builder, 'train')
  for name in (fake_ilsvrc.CMYK_FILE, fake_ilsvrc.PNG_FILE):
    image = Image.open(io.BytesIO(train[name]['image']))
    assert (image.format, image.mode) == ('JPEG', 'RGB'), name
  # An ordinary file is stored byte for byte.
  plain = 'n01440764_0.JPEG'
  assert Image.open(io.BytesIO(train[plain]['image'])).format == 'JPEG'
  pixels = images.decode_image(train[fake_ilsvrc.CMYK_FILE]['image'], 'cmyk')
  # The drawn box (value 230) survives the CMYK round trip.
  x0, y0, x1, y1 = fake_ilsvrc.train_box(2)
  assert pixels[y0 + 2:y1 - 1, x0 + 2:x1 - 1].mean() > 200


def _no_prepared_output(tmp_path):
  root = tmp_path / 'tfds' / 'ilsvrc2012_loc'
  leftovers = [p for p in root.rglob('*') if p.is_file()] if root.exists() else []
  return not leftovers, leftovers


def test_missing_archive_names_the_file_and_folder(tmp_path):
  manual = tmp_path / 'manual'
  fake_ilsvrc.write_fake_ilsvrc(str(manual))
  os.remove(manual / 'ILSVRC2012_img_val.tar')
  builder = data.get_builder('ilsvrc2012_loc', data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(FileNotFoundError, match=r'ILSVRC2012_img_val\.tar.*' + str(manual)):
    data.prepare(builder, str(manual))


def test_missing_annotations_name_both_forms(tmp_path):
  manual = tmp_path / 'manual'
  fake_ilsvrc.write_fake_ilsvrc(str(manual))
  os.remove(manual / 'LOC_val_solution.csv')
  builder = data.get_builder('ilsvrc2012_loc', data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(FileNotFoundError, match='LOC_val_solution.csv.*ILSVRC2012_bbox_val_v3.tgz'):
    data.prepare(builder, str(manual))


def test_truncated_image_fails_naming_it_and_writes_nothing(tmp_path):
  with pytest.raises(images.BadImageError, match='ILSVRC2012_val_00000002.JPEG'):
    _prepare(tmp_path, truncate_val=1)
  builder = data.get_builder('ilsvrc2012_loc', data_dir=str(tmp_path / 'tfds'))
  assert not builder.is_prepared()
  clean, leftovers = _no_prepared_output(tmp_path)
  assert clean, leftovers


def test_truncated_image_skipped_when_allowed(tmp_path, caplog):
  builder, expected = _prepare(tmp_path, truncate_val=1, skip_bad_images=True)
  val = _examples(builder, 'validation')
  assert sorted(val) == sorted(set(expected['validation']) - {'ILSVRC2012_val_00000002.JPEG'})
  assert any('ILSVRC2012_val_00000002.JPEG' in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize('form', ['loc', 'devkit'])
def test_inverted_box_is_rejected_naming_the_file(tmp_path, form):
  val = list(fake_ilsvrc.VAL)
  val[3] = ('n01440764', (44, 44), [[30, 10, 12, 33]])  # x0 > x1
  with pytest.raises(images.BadBoxError, match='ILSVRC2012_val_00000004.JPEG.*x0 > x1'):
    _prepare(tmp_path, form, val=val)


def test_overhanging_box_is_clipped(tmp_path):
  val = list(fake_ilsvrc.VAL)
  # A 1-based annotation one pixel past a 44×44 image's edge.
  val[3] = ('n01440764', (44, 44), [[10, 10, 44, 44]])
  builder, _ = _prepare(tmp_path, val=val)
  np.testing.assert_array_equal(
      _examples(builder, 'validation')['ILSVRC2012_val_00000004.JPEG']['boxes'],
      [[10, 10, 43, 43]])


def test_malformed_csv_line_is_named(tmp_path):
  manual = tmp_path / 'manual'
  fake_ilsvrc.write_fake_ilsvrc(str(manual))
  with open(manual / 'LOC_val_solution.csv', 'a') as f:
    f.write('ILSVRC2012_val_00000009,n01440764 1 2 3\n')
  builder = data.get_builder('ilsvrc2012_loc', data_dir=str(tmp_path / 'tfds'))
  with pytest.raises(ValueError, match=r'LOC_val_solution.csv:8'):
    data.prepare(builder, str(manual))


def test_not_prepared_error_says_how(tmp_path):
  data_config = common.get_common().data
  data_config.name = 'ilsvrc2012_loc'
  data_config.data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match='--dataset=ilsvrc2012_loc.*--manual_dir'):
    data.load_source(data_config, 'validation')
