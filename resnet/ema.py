"""--ema_decay: an exponential moving average of the weights, for validation and the export.

After every training step (and after Lookahead, if on), every float variable of the
model, trained weights and BatchNorm moving statistics alike, moves towards its
average, which lives in a second copy of the network (`average_model`):

    average <- average + (1 - decay) * (weight - average)

A new run's average starts at its initial weights (airbench's whitening included; those
of --init_from: train_lib.Training.init_model_from_run calls `reset`); `decay` close to 1
averages over about 1 / (1 - decay) steps. Training continues on the raw weights;
validation (so the choice of the best checkpoint), eval.py and the export use
`average_model`. Checkpoints hold both models ("model" and "ema_model"), so a resume
continues the average exactly.

Why our own, not Keras 3's optimizer EMA (`use_ema=True, ema_momentum=...`):
- Keras averages only the trainable variables (optimizer.build's list), so the EMA
  weights would be evaluated with the BatchNorm statistics of the raw weights.
- It offers no way to evaluate the average mid-training and go on training the raw
  weights: `finalize_variable_values` overwrites the model for good, and
  `ema_overwrite_frequency` makes the average the training weights (that is
  Lookahead, resnet/lookahead.py). Swapping weights in and out around every
  validation is code of ours anyway, and a second network needs none.
- It lives inside the optimizer's `apply`: before Lookahead moves the weights, on
  the inner optimizer of a LossScaleOptimizer (which must be built with it), and its
  average is only reachable as the optimizer's slot list, not as a model to export.
Here the average is a plain network: predict_step, the checkpoint (by structure, not by
variable order), eval.py and the export take it as they take the model.

Replicas: the update runs in replica context (strategy.run), each replica moving its
own copy of `average_model` towards its own copy of the model, without communication.
The trained weights are alike on every replica (all-reduced gradients), so their
averages stay alike; the BatchNorm statistics are per replica (unless --sync_batch_norm)
and so are their averages, which steps.make_average_moving_statistics sets to their
mean with the model's before every validation and save (the mean of the replicas'
averages is the average of the replicas' means: both are linear).

BatchNorm statistics: averaged like the weights (as timm's ModelEmaV2 does with its
buffers). The model's own moving statistics follow the raw weights of the last few
steps (momentum 0.9: ~10 steps); the averaged ones follow the same ~1 / (1 - decay)
steps as the averaged weights, the closest cheap match to them. Recomputing the
statistics for the averaged weights on training batches would be exact for them but
costs a pass over data before every validation.
"""

import keras


def _float_variables(model):
  # Weights and BatchNorm statistics; not the integer state of dropout's seed generators.
  return [v for v in model.weights if keras.backend.is_float_dtype(v.dtype)]


class WeightAverage:
  """The average of `model`'s weights, kept in `average_model` (the same network).

  Create it inside strategy.scope(), once `model` has its initial weights (after its
  `prepare`); checkpoint `average_model` with the run.
  """

  def __init__(self, model, average_model, decay):
    if not 0 < decay < 1:
      raise ValueError(f"decay must be in (0, 1), got {decay}.")
    self.average_model = average_model
    self.decay = decay
    self._pairs = list(zip(_float_variables(model), _float_variables(average_model), strict=True))
    self.reset()

  def reset(self):
    """Sets the average to the weights: a new run's start (again after --init_from).
    Eagerly, in cross-replica context: every replica's copy alike."""
    for weight, average in self._pairs:
      average.assign(weight.value)

  def update(self):
    """In replica context, after a step: moves every average towards its weight.

    The form average + (1 - decay)(weight - average) leaves a constant weight's
    average (airbench's frozen whitening) bit for bit as it is."""
    for weight, average in self._pairs:
      average.assign_add((1.0 - self.decay) * (weight.value - average.value))
