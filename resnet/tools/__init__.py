"""The project's programs, `python -m resnet.tools.<name>`, run from the checkout.

Nothing in the library (resnet/, data/), train.py or eval.py imports them; each is a
command-line program with the functions its tests call:

  benchmark         images/s of the train step, the input pipeline and model.fit
  step_profile      where a train step's time goes (TensorFlow's profiler)
  selfcheck         the check to run first on new hardware (replicas, precisions, speed)
  results           the results table, from run directories
  curves            learning curves, from run directories
  export            the export of a run's best model (resnet/export.py)
  predict           classify image files with an export
  import_reference  the reference implementation's published weights as a model directory

tools/ at the top of the checkout holds scripts that run outside this package (for
example in a PyTorch environment).
"""
