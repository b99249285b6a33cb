"""A trained run restored for evaluation, and its predictions over whole splits.

What eval.py's report and resnet/corruptions.py's robustness report share: the run's
checkpoint restored once under a strategy, then any number of splits predicted with it.
"""

import dataclasses

from data import pipeline, sources
from resnet import distribute, run_record, steps
from resnet import metrics as metrics_lib


def check_classes(dataset, class_names, record):
  """Raises sources.DataError unless `dataset`'s classes are the run's, in its order."""
  if list(class_names) != list(record["class_names"]):
    raise sources.DataError(
      f"{dataset} has classes {class_names}, but the model was trained on "
      f"{record['class_names']}: labels would not line up."
    )


@dataclasses.dataclass(frozen=True)
class RestoredRun:
  """A run's checkpoint restored for evaluation: what every evaluation of it shares."""

  model_dir: str
  strategy: object  # tf.distribute.Strategy
  record: dict  # run.json
  checkpoint: str  # The checkpoint path restored.
  predict_step: object  # steps.make_predict_step's, normalising as the run recorded.


def restore_run(model_dir, checkpoint_path=None, strategy_name="auto"):
  """A RestoredRun of `model_dir` (checkpoint_path default: the best checkpoint).

  strategy_name: "auto", "default", "one_device" or "mirrored". Evaluation runs in
  one process: "auto" mirrors over several local GPUs and ignores TF_CONFIG.
  """
  strategy = distribute.create_strategy(strategy_name, single_process=True)
  with strategy.scope():
    model, record, checkpoint_path = run_record.load_trained_model(model_dir, checkpoint_path)
  predict_step = steps.make_predict_step(strategy, model, run_record.input_normalization(record))
  return RestoredRun(model_dir, strategy, record, checkpoint_path, predict_step)


def predict(restored, images, labels, batch_size):
  """(probabilities float32 [N, C], labels int32 [N]) of every example once, in order.

  batch_size: global; rounded up to a multiple of the replicas (the padding is
  masked out, see pipeline.eval_batch_size).
  """
  dataset = pipeline.distribute_eval_dataset(
    restored.strategy, images, labels, global_batch_size=batch_size
  )
  return metrics_lib.predict(restored.predict_step, dataset, len(labels))
