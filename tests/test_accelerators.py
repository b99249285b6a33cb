"""TPUs, GPUs without tensor cores, GPUs TensorFlow cannot see: what a first run on
accelerators meets, proven here on the CPU with TensorFlow's detection patched."""

import os

import pytest
import tensorflow as tf

import train
from resnet import accelerators, distribute, machine, precision
from tests.test_train import debug_config

# The environment variables through which TensorFlow's Cloud TPU client finds a TPU by name.
TPU_NAME_VARIABLES = ("TPU_NAME", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS", "TPU_CONFIG")


@pytest.fixture
def no_tpu_name(monkeypatch):
  """An environment that names no TPU, as on a fresh Cloud TPU VM."""
  for name in TPU_NAME_VARIABLES:
    monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake_tpu(monkeypatch):
  """TensorFlow's TPU start-up replaced by recorders: the addresses the resolver was given."""
  addresses = []

  class Resolver:
    def __init__(self, tpu=None):
      addresses.append(tpu)

  monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", Resolver)
  monkeypatch.setattr(tf.config, "experimental_connect_to_cluster", lambda resolver: None)
  monkeypatch.setattr(tf.tpu.experimental, "initialize_tpu_system", lambda resolver: None)
  monkeypatch.setattr(tf.distribute, "TPUStrategy", lambda resolver: ("TPUStrategy", resolver))
  return addresses


def test_strategy_tpu_without_tpu_flag_means_this_vm_s_tpu(no_tpu_name, fake_tpu):
  # TensorFlow 2.21's resolver takes only "local" as the TPU attached to the VM; "" goes to
  # the Cloud TPU client, which wants a TPU name.
  strategy = distribute.create_strategy("tpu", tpu_address="")
  assert fake_tpu == ["local"] and strategy[0] == "TPUStrategy"
  distribute.create_strategy("tpu", tpu_address="my-tpu")
  distribute.create_strategy("tpu", tpu_address="grpc://10.0.0.2:8470")
  assert fake_tpu[1:] == ["my-tpu", "grpc://10.0.0.2:8470"]


def test_a_tpu_named_by_the_environment_is_left_to_tensorflow(monkeypatch, fake_tpu):
  # A pod slice (TPU_NAME) or GKE: TensorFlow's client reads the name when given "".
  monkeypatch.setenv("TPU_NAME", "my-pod-slice")
  distribute.create_strategy("tpu", tpu_address="")
  assert fake_tpu == [""]


def test_no_tpu_here_is_one_line_naming_the_local_tpu(no_tpu_name, image_folder, tmp_path):
  # TensorFlow itself, unpatched, on this CPU-only machine: the local TPU is not found.
  with pytest.raises(distribute.StrategyError) as error:
    train.train_and_evaluate(debug_config(image_folder, strategy="tpu"), str(tmp_path / "run"))
  message = str(error.value)
  assert "this VM's TPU" in message and "NotFoundError" in message and "\n" not in message
  assert not os.path.exists(tmp_path / "run")


def test_any_failure_to_reach_a_named_tpu_is_one_line(monkeypatch, fake_tpu):
  def unreachable(resolver):
    raise RuntimeError('TPU "my-tpu" is not yet ready; state: "CREATING"\nmore detail')

  monkeypatch.setattr(tf.config, "experimental_connect_to_cluster", unreachable)
  with pytest.raises(distribute.StrategyError, match="--tpu=my-tpu") as error:
    distribute.create_strategy("tpu", tpu_address="my-tpu")
  assert "not yet ready" in str(error.value) and "\n" not in str(error.value)


# --- GPUs: what --precision=auto picks, from what TensorFlow says of them ---------------


def fake_gpus(monkeypatch, details):
  """TensorFlow sees one GPU per entry of `details` (its get_device_details)."""
  gpus = [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in range(len(details))]
  list_physical_devices = tf.config.list_physical_devices
  monkeypatch.setattr(
    tf.config,
    "list_physical_devices",
    lambda kind=None: gpus if kind == "GPU" else list_physical_devices(kind),
  )
  monkeypatch.setattr(
    tf.config.experimental, "get_device_details", lambda device: details[gpus.index(device)]
  )


@pytest.mark.parametrize(
  "details, expected",
  [
    ([{"device_name": "Tesla P100-PCIE-16GB", "compute_capability": (6, 0)}], "float32"),
    ([{"device_name": "Tesla V100-SXM2-16GB", "compute_capability": (7, 0)}], "mixed_float16"),
    ([{"device_name": "NVIDIA A100-SXM4-40GB", "compute_capability": (8, 0)}], "mixed_bfloat16"),
    ([{"device_name": "NVIDIA H100", "compute_capability": (9, 0)}, {}], "float32"),
  ],
  ids=["P100", "V100", "A100", "H100_and_a_gpu_without_details"],
)
def test_auto_precision_reads_each_gpu_s_compute_capability(monkeypatch, details, expected):
  # A CPU with bfloat16 that must not decide: the GPUs run the step.
  monkeypatch.setattr(machine, "cpu_flags", lambda: {"avx512_bf16": True, "amx_bf16": True})
  fake_gpus(monkeypatch, details)
  chosen, reason = precision.choose_for_this_machine(tf.distribute.get_strategy())
  assert chosen == expected, reason
  assert reason.startswith("GPU")


# --- NVIDIA GPUs that TensorFlow does not see ---------------------------------------------


@pytest.fixture
def nvidia_driver(tmp_path, monkeypatch):
  """A driver that shows two GPUs (as /proc/driver/nvidia/gpus lays them out), and no
  CUDA_VISIBLE_DEVICES; TensorFlow here sees no GPU."""
  for bus, model in (("0000:00:04.0", "Tesla T4"), ("0000:00:05.0", "Tesla T4")):
    (tmp_path / "gpus" / bus).mkdir(parents=True)
    (tmp_path / "gpus" / bus / "information").write_text(
      f"Model: \t\t {model}\nIRQ:   \t\t 35\nBus Type: \t PCIe\nDevice Minor: \t 0\n"
    )
  monkeypatch.setattr(accelerators, "NVIDIA_PROC_GPUS", str(tmp_path / "gpus"))
  monkeypatch.setattr(accelerators, "NVIDIA_DEVICE_FILES", str(tmp_path / "dev" / "nvidia[0-9]*"))
  monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
  return tmp_path


def test_nvidia_gpus_are_found_by_the_driver_s_files(nvidia_driver, monkeypatch):
  assert accelerators.nvidia_gpus() == ["Tesla T4", "Tesla T4"]
  # Without /proc/driver/nvidia (some containers) the device files tell.
  (nvidia_driver / "dev").mkdir()
  for name in ("nvidia0", "nvidiactl", "nvidia-uvm"):
    (nvidia_driver / "dev" / name).write_text("")
  monkeypatch.setattr(accelerators, "NVIDIA_PROC_GPUS", str(nvidia_driver / "absent"))
  assert accelerators.nvidia_gpus() == [str(nvidia_driver / "dev" / "nvidia0")]


def test_nvidia_gpus_that_tensorflow_does_not_see_are_warned_about(nvidia_driver, caplog):
  # What a `pip install tensorflow` without CUDA's libraries gives on a GPU VM.
  warning = accelerators.missing_gpu_warning()
  assert "2 NVIDIA GPU(s) (Tesla T4)" in warning and "tensorflow[and-cuda]" in warning
  distribute.create_strategy("default")  # As train.py and eval.py start.
  assert any("TensorFlow sees none" in record.message for record in caplog.records)


def test_no_warning_when_tensorflow_sees_the_gpus_or_they_are_hidden(nvidia_driver, monkeypatch):
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # Hidden on purpose.
  assert accelerators.missing_gpu_warning() is None
  monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
  fake_gpus(monkeypatch, [{"compute_capability": (7, 5)}] * 2)
  assert accelerators.missing_gpu_warning() is None


def test_no_warning_without_nvidia_devices(nvidia_driver, monkeypatch):
  monkeypatch.setattr(accelerators, "NVIDIA_PROC_GPUS", str(nvidia_driver / "absent"))
  assert accelerators.nvidia_gpus() == [] and accelerators.missing_gpu_warning() is None
