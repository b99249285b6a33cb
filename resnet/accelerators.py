"""This machine's accelerators: reaching a Cloud TPU VM's TPU, and NVIDIA GPUs
that TensorFlow cannot see.

TensorFlow's TPU start-up assumes a set-up (a TPU name in the environment)
that a plain TPU VM does not have, and fails with tracebacks that do not say
what to do; here they become one line. A `pip install tensorflow` without
CUDA's libraries (the `tensorflow[and-cuda]` extra) finds no GPU on a VM that
has one, and training silently runs on the CPU; here that becomes a warning.
"""

import glob
import os

import tensorflow as tf

from resnet import errors

# Where TensorFlow's Cloud TPU client looks for a TPU's name when given none
# (tensorflow/python/tpu/client/client.py): GKE's endpoints, TPU_NAME, a TPU node's config.
TPU_NAME_VARIABLES = ("KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS", "TPU_NAME", "TPU_CONFIG")


class AcceleratorError(errors.UserError, ValueError):
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


# One directory per GPU the NVIDIA driver has bound, with an "information" file ("Model: ...").
NVIDIA_PROC_GPUS = "/proc/driver/nvidia/gpus"
# /dev/nvidia0, /dev/nvidia1, ...: one per GPU (not nvidiactl or nvidia-uvm). Containers
# given GPUs have these even where /proc/driver/nvidia is not mounted.
NVIDIA_DEVICE_FILES = "/dev/nvidia[0-9]*"


def nvidia_gpus():
  """The NVIDIA GPUs this machine's driver shows, whether or not TensorFlow can use them.

  Returns:
    [the driver's model name of each GPU], else [the device file of each GPU], else [].
  """
  models = []
  for directory in sorted(glob.glob(os.path.join(NVIDIA_PROC_GPUS, "*"))):
    model = "NVIDIA GPU"
    try:
      with open(os.path.join(directory, "information")) as file:
        for line in file:
          if line.startswith("Model:"):
            model = line.split(":", 1)[1].strip()
    except OSError:
      pass
    models.append(model)
  return models or sorted(glob.glob(NVIDIA_DEVICE_FILES))


def missing_gpu_warning():
  """The warning for NVIDIA GPUs that TensorFlow does not see, or None.

  None also when CUDA_VISIBLE_DEVICES hides every GPU ("" or "-1"): on purpose.
  Listing physical devices does not start TensorFlow's runtime.
  """
  if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
    return None
  gpus = nvidia_gpus()
  if not gpus or tf.config.list_physical_devices("GPU"):
    return None
  return (
    f"This machine has {len(gpus)} NVIDIA GPU(s) ({', '.join(sorted(set(gpus)))}) but "
    "TensorFlow sees none: everything runs on the CPU. Install TensorFlow with CUDA's "
    "libraries (pip install -e '.[gpu]', i.e. tensorflow[and-cuda]); if it has them, "
    "TensorFlow's start-up log says why (driver too old, GPU older than compute capability "
    "6.0). Check with python -m resnet.tools.selfcheck."
  )
