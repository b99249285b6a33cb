"""The network: the paper's parameter counts, outputs, and complete checkpoints."""

import numpy as np
import pytest
import tensorflow as tf

from resnet import model as model_lib

# Trainable parameters with option-A (parameter-free) shortcuts. The paper's
# Table 6 rounds them to 0.27M, 0.46M, 0.66M, 0.85M and 1.7M.
EXPECTED_PARAMETERS = {
  "resnet8": 75_290,
  "resnet20": 269_722,
  "resnet32": 464_154,
  "resnet44": 658_586,
  "resnet56": 853_018,
  "resnet110": 1_727_962,
}


def count_parameters(variables):
  return sum(int(np.prod(v.shape)) for v in variables)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMETERS))
def test_parameter_counts_match_the_paper(name):
  model = model_lib.create_model(name)
  assert count_parameters(model.trainable_variables) == EXPECTED_PARAMETERS[name]
  depth = model_lib.DEPTHS[name]
  convolutions = [v for v in model.trainable_variables if v.name == "kernel"]
  assert len(convolutions) == depth - 1 + 1  # depth - 1 convolutions plus the dense layer.


def test_logits_shape_and_dtype():
  model = model_lib.create_model("resnet8", num_classes=7)
  logits = model(tf.zeros([3, 32, 32, 3]), training=False)
  assert logits.shape == (3, 7)
  assert logits.dtype == tf.float32


def test_bad_names_and_depths_are_refused():
  with pytest.raises(ValueError, match="Unknown model 'resnet18'"):
    model_lib.create_model("resnet18")
  with pytest.raises(ValueError, match="6n \\+ 2"):
    model_lib.create_model(21)


def test_checkpoint_holds_every_variable(tmp_path):
  # Keras 3 layers kept in a Python list are invisible to tf.train.Checkpoint;
  # this fails if any block's weights are left out of the checkpoint.
  model = model_lib.create_model("resnet20")
  path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
  saved = [name for name, _ in tf.train.list_variables(path) if name.startswith("model/")]
  assert len(saved) == len(model.variables) == 97

  restored = model_lib.create_model("resnet20")
  tf.train.Checkpoint(model=restored).read(path).assert_existing_objects_matched()
  for original, copy in zip(model.variables, restored.variables, strict=True):
    np.testing.assert_array_equal(original.numpy(), copy.numpy())
