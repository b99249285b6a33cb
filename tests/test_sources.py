"""Data sources: image folders, TFDS, clear errors, the validation split."""

import os

import numpy as np
import pytest

from data import sources
from tests.conftest import CLASS_NAMES, TEST_PER_CLASS, TRAIN_PER_CLASS, write_image_folder

# --- Loading ---------------------------------------------------------------------


def test_image_folder_loads_every_image_with_sorted_classes(image_folder):
  images, labels, class_names = sources.load_split(f"folder:{image_folder}", "train")
  assert class_names == CLASS_NAMES
  assert images.shape == (len(CLASS_NAMES) * TRAIN_PER_CLASS, 32, 32, 3)
  assert images.dtype == np.uint8 and labels.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(labels), [TRAIN_PER_CLASS] * len(CLASS_NAMES))
  # The fixture colours each class: its own channel is the brightest on average.
  channel_means = images.reshape(len(labels), -1, 3).mean(axis=1)
  np.testing.assert_array_equal(channel_means.argmax(axis=1), labels)
  _, test_labels, _ = sources.load_split(f"folder:{image_folder}", "test")
  assert len(test_labels) == len(CLASS_NAMES) * TEST_PER_CLASS


def test_tfds_cifar10_loads_under_mock_data(mock_cifar10):
  images, labels, class_names = sources.load_split("cifar10", "train")
  assert images.shape == (300, 32, 32, 3) and images.dtype == np.uint8
  assert len(class_names) == 10 and labels.max() < 10


def test_offline_tfds_gives_one_clear_paragraph(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, "download_host_reachable", lambda host: False)
  with pytest.raises(sources.DataError, match="--tfds_data_dir") as error:
    sources.load_split("cifar10", "train", str(tmp_path))
  assert "--dataset=folder:PATH" in str(error.value)


@pytest.mark.parametrize(
  "break_folder, message",
  [
    (lambda root: None, "holds no PNG or JPEG images"),
    (lambda root: os.makedirs(os.path.join(root, "train", "zebra")), "without images.*zebra"),
    (
      lambda root: open(os.path.join(root, "train", "cat", "bad.png"), "wb").write(b"not a png"),
      "Unreadable image file.*bad.png",
    ),
  ],
  ids=["no-images", "empty-class", "corrupt-file"],
)
def test_broken_folders_are_named(tmp_path, break_folder, message):
  root = str(tmp_path)
  if message.startswith("holds no"):
    os.makedirs(os.path.join(root, "train", "cat"))
  else:
    write_image_folder(root, {"train": 2})
  break_folder(root)
  with pytest.raises(sources.DataError, match=message):
    sources.load_split(f"folder:{root}", "train")


def test_missing_split_names_the_splits_found(image_folder):
  with pytest.raises(sources.DataError, match="no 'validation' split.*'test', 'train'"):
    sources.load_split(f"folder:{image_folder}", "validation")


# --- Validation split ---------------------------------------------------------------


def test_validation_split_is_disjoint_complete_and_fixed():
  train_index, validation_index = sources.split_off_validation(50_000, 5_000)
  assert len(train_index) == 45_000 and len(validation_index) == 5_000
  assert not np.intersect1d(train_index, validation_index).size
  np.testing.assert_array_equal(np.union1d(train_index, validation_index), np.arange(50_000))
  again = sources.split_off_validation(50_000, 5_000)
  np.testing.assert_array_equal(again[1], validation_index)
  with pytest.raises(sources.DataError, match="validation_size"):
    sources.split_off_validation(100, 100)
