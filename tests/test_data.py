"""Tests for adaflow.data: sources, step-indexed batches, sharding, flips and validation."""
import os

import ml_collections
import numpy as np
from PIL import Image
import pytest

from adaflow import data
from adaflow.data import pipeline
from adaflow.errors import UserError, is_user_error


def make_config(**overrides):
  base = dict(name='digits', image_size=16, channels=None, random_flip=False, data_dir=None,
              split='train', num_crops=256, image_key='image', label_key='label', resize=False)
  base.update(overrides)
  return ml_collections.ConfigDict(base)


class IndexSource:
  """Example i has label i, so batches can be checked at the example-id level."""

  def __init__(self, n, size=4):
    self._n, self._size = n, size

  def __len__(self):
    return self._n

  def __getitem__(self, i):
    image = np.zeros((self._size, self._size, 1), np.uint8)
    image[:, 0] = 255  # Left column bright: a flip moves it to the right.
    return pipeline.example(image, i)


def check_batch(batch, batch_size, shape, num_classes):
  assert batch['image'].shape == (batch_size,) + shape
  assert batch['image'].dtype == np.float32
  assert batch['label'].shape == (batch_size,)
  assert batch['label'].dtype == np.int32
  assert batch['image'].min() >= -1.0 and batch['image'].max() <= 1.0
  assert batch['image'].max() > batch['image'].min()
  assert ((batch['label'] >= 0) & (batch['label'] < num_classes)).all()


# ----------------------------------------------------------------------------- sources


@pytest.mark.parametrize('size', [16, 32])
def test_digits_shapes(size):
  cfg = make_config(image_size=size)
  info = data.get_info(cfg)
  assert info == data.DatasetInfo((size, size, 1), 10, 1797, tuple('0123456789'))
  src = data.make_source(cfg)
  ex = src[5]
  assert len(src) == 1797
  assert ex['image'].shape == (size, size, 1) and ex['image'].dtype == np.uint8
  assert ex['label'].dtype == np.int32 and ex['label'].shape == ()
  check_batch(data.make_train_batches(cfg, global_batch_size=8, seed=0)[3], 8, (size, size, 1), 10)


def test_digits_read_without_scikit_learn_equal_load_digits(monkeypatch):
  """The digits are read from scikit-learn's CSV without importing scikit-learn (start-up time):
  the same pixels and labels as `load_digits`, and the fallback (load_digits itself) where the
  file is not found gives them too."""
  from sklearn.datasets import load_digits
  from adaflow.data import embedded
  reference = load_digits()
  pixels, labels = embedded._sklearn_digits()
  np.testing.assert_array_equal(pixels, reference.data)
  np.testing.assert_array_equal(labels, reference.target)
  assert pixels.dtype == reference.data.dtype and labels.dtype == reference.target.dtype
  monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
  pixels, labels = embedded._sklearn_digits()
  np.testing.assert_array_equal(pixels, reference.data)
  np.testing.assert_array_equal(labels, reference.target)


def test_digits_rgb():
  cfg = make_config(channels=3)
  assert data.get_info(cfg).image_shape == (16, 16, 3)
  image = data.make_source(cfg)[0]['image']
  np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_crops_shapes():
  cfg = make_config(name='crops', image_size=32, num_crops=48)
  info = data.get_info(cfg)
  assert info.image_shape == (32, 32, 3)
  assert info.num_examples == 48
  assert len(info.class_names) == info.num_classes >= 10
  assert 'cat' not in info.class_names
  src = data.make_source(cfg)
  assert [int(src[i]['label']) for i in range(3)] == [0, 1, 2]
  np.testing.assert_array_equal(src[7]['image'], data.make_source(cfg)[7]['image'])
  check_batch(data.make_train_batches(cfg, global_batch_size=8, seed=1)[2], 8, (32, 32, 3),
              info.num_classes)
  test_images, _ = data.load_arrays(cfg, 4, split='test')
  assert test_images.shape == (4, 32, 32, 3)


def test_tfds_mock():
  tfds = pytest.importorskip('tensorflow_datasets')
  cfg = make_config(name='tfds:cifar10', image_size=32)
  with tfds.testing.mock_data(num_examples=24):
    info = data.get_info(cfg)
    assert info.image_shape == (32, 32, 3)
    assert info.num_classes == 10 and info.num_examples == 24
    check_batch(data.make_train_batches(cfg, global_batch_size=8, seed=0)[5], 8, (32, 32, 3), 10)
    gray = make_config(name='tfds:cifar10', image_size=32, channels=1)
    assert data.make_source(gray)[0]['image'].shape == (32, 32, 1)
    with pytest.raises(ValueError, match='data.image_size'):
      data.get_info(make_config(name='tfds:cifar10', image_size=16))
    resized = make_config(name='tfds:cifar10', image_size=16, resize=True)
    assert data.make_source(resized)[3]['image'].shape == (16, 16, 3)


def test_tfds_missing_dir(tmp_path):
  cfg = make_config(name='tfds:cifar10', image_size=32, data_dir=str(tmp_path / 'nothing'))
  with pytest.raises(ValueError, match='data.data_dir') as err:
    data.get_info(cfg)
  assert 'tfds build' in str(err.value) and 'array_record' in str(err.value)
  assert not os.path.exists(tmp_path / 'nothing' / 'cifar10')  # Nothing was downloaded.


def write_folder(root, shapes):
  for cls, shape in shapes.items():
    os.makedirs(root / cls)
    for k in range(3):
      rng = np.random.default_rng(k)
      Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / cls / f'{k}.png')
  (root / 'b_zebra' / 'notes.txt').write_text('not an image')


def test_folder(tmp_path):
  write_folder(tmp_path, {'b_zebra': (16, 16, 3), 'a_gray': (16, 16)})
  cfg = make_config(name='folder', data_dir=str(tmp_path))
  info = data.get_info(cfg)
  assert info == data.DatasetInfo((16, 16, 3), 2, 6, ('a_gray', 'b_zebra'))
  src = data.make_source(cfg)
  assert [int(src[i]['label']) for i in range(6)] == [0, 0, 0, 1, 1, 1]
  gray = src[0]['image']
  np.testing.assert_array_equal(gray[..., 0], gray[..., 1])
  check_batch(data.make_train_batches(cfg, global_batch_size=4, seed=0)[1], 4, (16, 16, 3), 2)
  one = make_config(name='folder', data_dir=str(tmp_path), channels=1)
  assert data.make_source(one)[4]['image'].shape == (16, 16, 1)


def test_folder_wrong_shape_and_resize(tmp_path):
  write_folder(tmp_path, {'b_zebra': (20, 24, 3)})
  with pytest.raises(ValueError, match='data.image_size'):
    data.get_info(make_config(name='folder', data_dir=str(tmp_path)))
  src = data.make_source(make_config(name='folder', data_dir=str(tmp_path), resize=True))
  assert src[2]['image'].shape == (16, 16, 3)


def test_folder_gray_and_rgba_to_rgb(tmp_path):
  """Gray -> RGB repeats the plane; RGBA -> RGB drops alpha (the stored colour is kept)."""
  os.makedirs(tmp_path / 'a')
  gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
  Image.fromarray(gray, 'L').save(tmp_path / 'a' / '0.png')
  rgba = np.random.default_rng(0).integers(0, 256, (16, 16, 4), dtype=np.uint8)
  rgba[..., 3] = 0          # fully transparent: the colour still comes through
  Image.fromarray(rgba, 'RGBA').save(tmp_path / 'a' / '1.png')
  src = data.make_source(make_config(name='folder', data_dir=str(tmp_path)))
  np.testing.assert_array_equal(src[0]['image'], np.repeat(gray[..., None], 3, -1))
  np.testing.assert_array_equal(src[1]['image'], rgba[..., :3])


def test_folder_center_crop_is_adm(tmp_path):
  """data.crop='center' on a 40x70 image: the short side becomes 16, the centre square is kept
  (the same pixels as ADM's center_crop_arr written out with PIL here)."""
  os.makedirs(tmp_path / 'a')
  img = np.random.default_rng(1).integers(0, 256, (40, 70, 3), dtype=np.uint8)
  img[:, :20] = 0           # the left stripe is cropped away
  Image.fromarray(img).save(tmp_path / 'a' / '0.png')
  out = data.make_source(make_config(name='folder', data_dir=str(tmp_path), crop='center'))[0]['image']
  pil = Image.fromarray(img).resize((35, 20), Image.BOX)            # 40 >= 2 * 16: box-halved first
  pil = pil.resize((28, 16), Image.BICUBIC)                          # short side 20 -> 16: 35 * 0.8 = 28
  want = np.asarray(pil)[:, 6:22]                                    # (28 - 16) // 2 = 6
  assert out.shape == (16, 16, 3)
  np.testing.assert_array_equal(out, want)
  with pytest.raises(ValueError, match="data.crop='middle'"):
    data.make_source(make_config(name='folder', data_dir=str(tmp_path), crop='middle'))
  with pytest.raises(ValueError, match='data.resample'):
    data.make_source(make_config(name='folder', data_dir=str(tmp_path), crop='center', resample='cubic'))


def test_folder_truncated_image_names_the_file(tmp_path):
  write_folder(tmp_path, {'b_zebra': (16, 16, 3)})
  path = tmp_path / 'b_zebra' / '2.png'
  path.write_bytes(path.read_bytes()[:60])
  src = data.make_source(make_config(name='folder', data_dir=str(tmp_path)))
  with pytest.raises(UserError, match='2.png: cannot read this image') as err:
    src[2]
  assert '\n' not in str(err.value) and is_user_error(err.value)


# ----------------------------------------------------------------------------- pipeline


def test_determinism_and_seed():
  cfg = make_config()
  a = data.make_train_batches(cfg, global_batch_size=16, seed=3)
  b = data.make_train_batches(cfg, global_batch_size=16, seed=3)
  c = data.make_train_batches(cfg, global_batch_size=16, seed=4)
  for step in (0, 7, 10**6):
    np.testing.assert_array_equal(a[step]['image'], b[step]['image'])
    np.testing.assert_array_equal(a[step]['label'], b[step]['label'])
  assert not np.array_equal(a[0]['image'], c[0]['image'])
  assert not np.array_equal(a[0]['image'], a[1]['image'])
  x1, y1 = data.load_arrays(cfg, 10, seed=1)
  x2, y2 = data.load_arrays(cfg, 10, seed=1)
  np.testing.assert_array_equal(x1, x2)
  np.testing.assert_array_equal(y1, y2)
  assert x1.dtype == np.float32 and y1.dtype == np.int32 and x1.shape == (10, 16, 16, 1)


def test_epochs_are_permutations_and_reshuffled():
  batches = pipeline.train_batches_from_source(IndexSource(12), global_batch_size=4, seed=0)
  epochs = [np.concatenate([batches[3 * e + k]['label'] for k in range(3)]) for e in range(3)]
  for ids in epochs:
    assert sorted(ids) == list(range(12))
  assert not np.array_equal(epochs[0], epochs[1])


def test_process_shards_disjoint_and_complete():
  src = IndexSource(40)
  single = pipeline.train_batches_from_source(src, global_batch_size=8, seed=5)
  shards = [pipeline.train_batches_from_source(src, global_batch_size=8, seed=5,
                                               process_index=p, process_count=2)
            for p in range(2)]
  assert shards[0].batch_size_per_process == 4
  for step in (0, 1, 4, 123):
    ids = [set(s[step]['label'].tolist()) for s in shards]
    assert len(ids[0]) == len(ids[1]) == 4
    assert not ids[0] & ids[1]
    assert ids[0] | ids[1] == set(single[step]['label'].tolist())


def test_random_flip():
  src = IndexSource(64)
  plain = pipeline.train_batches_from_source(src, global_batch_size=64, seed=0)[0]
  flip_a = pipeline.train_batches_from_source(src, global_batch_size=64, seed=0,
                                              random_flip=True)[0]
  flip_b = pipeline.train_batches_from_source(src, global_batch_size=64, seed=0,
                                              random_flip=True)[0]
  np.testing.assert_array_equal(flip_a['image'], flip_b['image'])
  np.testing.assert_array_equal(flip_a['label'], plain['label'])
  flipped = np.all(flip_a['image'] == plain['image'][:, :, ::-1], axis=(1, 2, 3))
  same = np.all(flip_a['image'] == plain['image'], axis=(1, 2, 3))
  assert (flipped | same).all()
  assert 10 < flipped.sum() < 54
  # The flip of an element does not depend on how the stream is split across processes.
  half = pipeline.train_batches_from_source(src, global_batch_size=64, seed=0, random_flip=True,
                                            process_index=1, process_count=2)[0]
  np.testing.assert_array_equal(half['image'], flip_a['image'][1::2])
  # Through the config path too.
  cfg = make_config(random_flip=True)
  np.testing.assert_array_equal(data.make_train_batches(cfg, global_batch_size=4, seed=0)[2]['image'],
                                data.make_train_batches(cfg, global_batch_size=4, seed=0)[2]['image'])


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize('overrides, field', [
    (dict(name='mnist'), 'data.name'),
    (dict(name='tfds:'), 'data.name'),
    (dict(image_size=24), 'data.image_size'),
    (dict(name='crops', image_size=16), 'data.image_size'),
    (dict(channels=2), 'data.channels'),
    (dict(name='crops', image_size=32, num_crops=0), 'data.num_crops'),
    (dict(split='test'), 'data.split'),
    (dict(name='folder', data_dir='/nonexistent/adaflow'), 'data.data_dir'),
])
def test_bad_config(overrides, field):
  with pytest.raises(ValueError, match=field.replace('.', r'\.')):
    data.get_info(make_config(**overrides))


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match='digits.*crops.*folder.*tfds'):
    data.make_source(make_config(name='nope'))


def test_empty_folder(tmp_path):
  (tmp_path / 'empty_class').mkdir()
  with pytest.raises(ValueError, match=r'data\.data_dir'):
    data.get_info(make_config(name='folder', data_dir=str(tmp_path)))


def test_batch_not_divisible_by_processes():
  with pytest.raises(ValueError, match=r'train\.batch_size'):
    data.make_train_batches(make_config(), global_batch_size=10, seed=0, process_count=3)
  with pytest.raises(ValueError, match=r'data\.random_flip'):
    data.make_train_batches(make_config(random_flip='yes'), global_batch_size=8, seed=0)
