"""Metrics on the host: exact counting over replicas, and agreement with scikit-learn."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn import metrics as sk_metrics

from data import augment, pipeline
from resnet import distribute, metrics, models, steps


def model_and_examples(strategy, count, seed):
  """A ResNet-8 of 3 classes built under `strategy`, and `count` random uint8 examples."""
  with strategy.scope():
    keras.utils.set_random_seed(seed)
    model = models.create_model("resnet8", num_classes=3)
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
  return model, images, rng.integers(0, 3, count).astype(np.int32)


@pytest.mark.parametrize("strategy_name", ["default", "one_device", "mirrored"])
def test_evaluate_counts_every_example_and_agrees_with_predict(strategy_name):
  strategy = distribute.create_strategy(strategy_name)
  model, images, labels = model_and_examples(strategy, 23, seed=2)
  dataset = pipeline.distribute_eval_dataset(strategy, images, labels, global_batch_size=8)
  predict_step = steps.make_predict_step(strategy, model)
  result = metrics.evaluate(predict_step, [(1.0, dataset)], 23, ["bird", "cat", "dog"])
  probabilities, seen_labels = metrics.predict(predict_step, dataset, 23)
  np.testing.assert_array_equal(seen_labels, labels)
  assert result["num_examples"] == 23 and np.sum(result["confusion_matrix"]) == 23
  predictions = probabilities.argmax(axis=1)
  assert result["accuracy"] == pytest.approx(np.mean(predictions == labels))
  expected_loss = -np.log(probabilities[np.arange(23), labels]).mean()
  assert result["loss"] == pytest.approx(expected_loss, rel=1e-4)
  # The same model on the same data gives the same numbers on one or two replicas.
  reference = models.create_model("resnet8", num_classes=3)
  reference.set_weights(model.get_weights())
  logits = reference(augment.normalize(images), training=False)
  np.testing.assert_allclose(probabilities, tf.nn.softmax(logits).numpy(), atol=1e-5)


# Three replicas need three logical devices, set before TensorFlow starts: a fresh
# process (this one has two). A tiny model on 21 examples; batches of 8 and 256
# (eval.py's default), neither a multiple of 3, nor of 21.
THREE_REPLICAS_EVALUATE = """
import json
import keras, numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 3)
from data import augment, pipeline
from resnet import distribute, metrics, steps
strategy = distribute.create_strategy("mirrored")
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (21, 32, 32, 3), dtype=np.uint8)
labels = rng.integers(0, 3, 21).astype(np.int32)
with strategy.scope():
  keras.utils.set_random_seed(2)
  model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3),
                            keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
one_device = tf.nn.softmax(model(augment.normalize(images))).numpy()
predict_step = steps.make_predict_step(strategy, model)
results = {"replicas": strategy.num_replicas_in_sync, "one_device": one_device.tolist(),
           "labels": labels.tolist()}
for batch_size in (8, 256):
  views = pipeline.distribute_eval_views(strategy, images, labels, global_batch_size=batch_size)
  result = metrics.evaluate(predict_step, views, 21, ["bird", "cat", "dog"])
  result["probabilities"] = result["probabilities"].tolist()
  result["labels"] = result["labels"].tolist()
  results[batch_size] = result
print(json.dumps(results))
"""


def test_three_replicas_evaluate_every_example_once_for_any_batch_size():
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  process = subprocess.run(
    [sys.executable, "-c", THREE_REPLICAS_EVALUATE],
    cwd=repo,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert process.returncode == 0, process.stderr[-3000:]
  results = json.loads(process.stdout.splitlines()[-1])
  assert results["replicas"] == 3
  one_device, labels = np.array(results["one_device"]), np.array(results["labels"])
  expected = metrics.compute_metrics(one_device, labels, ["bird", "cat", "dog"])
  for batch_size in ("8", "256"):
    result = results[batch_size]
    assert result["num_examples"] == 21 and np.sum(result["confusion_matrix"]) == 21
    np.testing.assert_array_equal(result["labels"], labels)  # In split order, padding removed.
    np.testing.assert_allclose(result["probabilities"], one_device, atol=1e-6)
    assert result["confusion_matrix"] == expected["confusion_matrix"]
    assert result["accuracy"] == expected["accuracy"]
    assert result["loss"] == pytest.approx(expected["loss"], rel=1e-6)


def test_calibration_error_on_a_hand_made_example():
  # Four predictions at confidence 0.9, three right: |0.75 - 0.9| = 0.15 in one bin;
  # two at 0.6, both right: |1.0 - 0.6| = 0.4. ECE = 4/6 x 0.15 + 2/6 x 0.4.
  probabilities = np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 2)
  labels = np.array([0, 0, 0, 1, 0, 0])
  result = metrics.calibration(probabilities, labels, num_bins=10)
  assert result["ece"] == pytest.approx(4 / 6 * 0.15 + 2 / 6 * 0.4)
  assert result["bin_counts"][9] == 4 and result["bin_counts"][6] == 2
  assert result["bin_accuracy"][9] == pytest.approx(0.75)
  assert result["bin_accuracy"][0] is None  # An empty bin (JSON null).


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compute_metrics_agrees_with_scikit_learn(dtype):
  class_names = ["plane", "car", "bird", "cat", "deer", "dog", "frog"]
  class_ids = list(range(len(class_names)))
  rng = np.random.default_rng(3)
  probabilities = rng.dirichlet(np.ones(len(class_names)), size=300)
  labels = rng.integers(0, 5, 300)  # Classes 5 and 6 never occur: recall 0 by zero_division.
  probabilities[:, 3] = probabilities.min(axis=1) / 2  # Class 3 is never predicted.
  probabilities[:, 4] = np.where(labels == 4, 0.0, probabilities[:, 4])  # Log loss clips these.
  probabilities[:10] = np.eye(len(class_names))[0]  # Certain: ties for every k > 1.
  probabilities = (probabilities / probabilities.sum(axis=1, keepdims=True)).astype(dtype)
  result = metrics.compute_metrics(probabilities, labels, class_names)

  predictions = probabilities.argmax(axis=1)
  assert 3 not in predictions and 5 in predictions and (labels == 4).any()
  assert result["accuracy"] == pytest.approx(sk_metrics.accuracy_score(labels, predictions))
  assert np.isfinite(result["loss"])
  assert result["loss"] == pytest.approx(
    sk_metrics.log_loss(labels, probabilities, labels=class_ids)
  )
  assert result["num_examples"] == 300
  assert list(result["top_k_accuracy"]) == ["1", "5"]
  for k, accuracy in result["top_k_accuracy"].items():
    assert accuracy == pytest.approx(
      sk_metrics.top_k_accuracy_score(labels, probabilities, k=int(k), labels=class_ids)
    )
  expected_confusion = sk_metrics.confusion_matrix(labels, predictions, labels=class_ids)
  assert result["confusion_matrix"] == expected_confusion.tolist()
  precision, recall, f1, support = sk_metrics.precision_recall_fscore_support(
    labels, predictions, labels=class_ids, zero_division=0
  )
  per_class = [result["per_class"][name] for name in class_names]
  assert [scores["precision"] for scores in per_class] == pytest.approx(precision)
  assert [scores["recall"] for scores in per_class] == pytest.approx(recall)
  assert [scores["f1"] for scores in per_class] == pytest.approx(f1)
  assert [scores["support"] for scores in per_class] == support.tolist()
  assert result["per_class"]["cat"]["precision"] == 0.0  # Never predicted.
  assert result["per_class"]["frog"]["recall"] == 0.0  # Never a label.
  assert result["macro_avg"] == pytest.approx(
    {"precision": precision.mean(), "recall": recall.mean(), "f1": f1.mean()}
  )
  assert result["ece"] == pytest.approx(metrics.calibration(probabilities, labels)["ece"])


def test_flip_translate_tta_averages_six_views_of_each_image():
  strategy = distribute.create_strategy("mirrored")
  model, images, labels = model_and_examples(strategy, 11, seed=3)
  views = pipeline.distribute_eval_views(
    strategy, images, labels, global_batch_size=4, tta="flip_translate"
  )
  predict_step = steps.make_predict_step(strategy, model)
  probabilities, _ = metrics.predict_views(predict_step, views, 11)

  def softmax(batch):
    return tf.nn.softmax(model(augment.normalize(batch), training=False)).numpy()

  padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  up_left, down_right = padded[:, :32, :32], padded[:, 2:, 2:]
  np.testing.assert_array_equal(up_left[:, 1:, 1:], images[:, :31, :31])  # One pixel.
  expected = (softmax(images) + softmax(images[:, :, ::-1])) / 4 + sum(
    softmax(view) + softmax(view[:, :, ::-1]) for view in (up_left, down_right)
  ) / 8
  np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)
  assert [weight for weight, _ in views] == [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
