"""Reaching this machine's accelerators: the TPU of a Cloud TPU VM.

TensorFlow's own start-up code assumes a set-up (a TPU name in the
environment) that a plain TPU VM does not have, and fails with tracebacks that
do not say what to do; this module turns those into one line.
"""

import os

import tensorflow as tf

# Where TensorFlow's Cloud TPU client looks for a TPU's name when given none
# (tensorflow/python/tpu/client/client.py): GKE's endpoints, TPU_NAME, a TPU node's config.
TPU_NAME_VARIABLES = ("KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS", "TPU_NAME", "TPU_CONFIG")


class AcceleratorError(ValueError):
  """An accelerator that cannot be used as asked, with a message for the user."""


def tpu_resolver_address(tpu_address):
  """What TPUClusterResolver is given for --tpu=`tpu_address`.

  TensorFlow 2.21's resolver takes only "local" as the TPU attached to this VM;
  anything else, "" included, goes to the Cloud TPU client, which raises "Please
  provide a TPU Name" unless the environment names one. So "" means "local" (a
  Cloud TPU VM), unless the environment names a TPU (a pod slice's TPU_NAME, GKE),
  which the client then reads.

  Returns:
    `tpu_address` (a name or grpc:// address) if given; else "" when the environment
    names a TPU, or "local".
  """
  if tpu_address or any(os.environ.get(name) for name in TPU_NAME_VARIABLES):
    return tpu_address
  return "local"


def tpu_strategy(tpu_address):
  """TPUStrategy on the TPU that tpu_resolver_address(`tpu_address`) names.

  Raises:
    AcceleratorError: any failure to resolve, connect to or initialise it, in one line.
  """
  address = tpu_resolver_address(tpu_address)
  try:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  except Exception as error:  # ValueError, NotFoundError, RuntimeError, ImportError, ...
    first_line = (str(error).strip().splitlines() or [""])[0]
    if len(first_line) > 160:  # TensorFlow's can list every attribute of an op.
      first_line = first_line[:160] + "..."
    where = {"local": "this VM's TPU ('local')", "": "the TPU that TPU_NAME names"}
    raise AcceleratorError(
      f"--strategy=tpu cannot start {where.get(address, f'--tpu={address}')}: "
      f"{type(error).__name__}: {first_line} On a TPU VM TensorFlow must be the "
      "tensorflow-tpu build (README, Set-up); a TPU node or pod slice needs --tpu=NAME "
      "or grpc://HOST:PORT."
    ) from None
