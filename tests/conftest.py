"""Shared fixtures. Two logical CPU devices are configured before TF initialises,
so that MirroredStrategy tests get two replicas on one CPU."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # As train.py and eval.py set it.

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from data import sources  # noqa: E402

tf.config.set_logical_device_configuration(
  tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

CLASS_NAMES = ["bird", "cat", "dog"]  # Sorted, as ImageFolder sorts them.
TRAIN_PER_CLASS = 40
TEST_PER_CLASS = 7  # 21 test images: not a multiple of any batch size used.


def write_image_folder(root, split_counts, seed=0):
  """PATH/<split>/<class>/<i>.png (and .jpg for odd i): images whose mean colour
  depends on the class, so a model can learn them in a few steps."""
  rng = np.random.default_rng(seed)
  for split, per_class in split_counts.items():
    for label, name in enumerate(CLASS_NAMES):
      os.makedirs(os.path.join(root, split, name), exist_ok=True)
      for index in range(per_class):
        base = np.zeros((32, 32, 3), np.int32) + 60
        base[..., label] += 120
        image = np.clip(base + rng.integers(-40, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
        if index % 2:
          data = tf.io.encode_jpeg(image, quality=95).numpy()
          path = os.path.join(root, split, name, f"{index:04d}.jpg")
        else:
          data = tf.io.encode_png(image).numpy()
          path = os.path.join(root, split, name, f"{index:04d}.png")
        with open(path, "wb") as file:
          file.write(data)
  return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
  """A small three-class image folder with train and test splits."""
  root = str(tmp_path_factory.mktemp("images"))
  return write_image_folder(root, {"train": TRAIN_PER_CLASS, "test": TEST_PER_CLASS})


@pytest.fixture
def mock_cifar10(monkeypatch):
  """TFDS's mock CIFAR-10 (random images, no network)."""
  monkeypatch.setattr(sources, "download_host_reachable", lambda host: True)
  with tfds.testing.mock_data(num_examples=300):
    yield


@pytest.hookimpl(tryfirst=True)  # Before pytest-xdist reads the groups (--dist loadgroup).
def pytest_collection_modifyitems(items):
  """The tests of a module that use its module-scoped fixtures (a trained run, an export)
  run on one xdist worker, so that each fixture is built once, not once per worker."""
  for item in items:
    definitions = item._fixtureinfo.name2fixturedefs.values()
    if any(fixture[-1].scope == "module" for fixture in definitions):
      item.add_marker(pytest.mark.xdist_group(item.module.__name__))
