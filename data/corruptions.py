"""CIFAR-10-C (Hendrycks & Dietterich 2019): the CIFAR-10 test images under 19 corruptions
at 5 severities, read through TFDS's `cifar10_corrupted`.

Each (corruption, severity) is one TFDS config, `cifar10_corrupted/<corruption>_<severity>`,
whose test split holds the 10,000 CIFAR-10 test images in their order, corrupted, with
CIFAR-10's labels. TFDS names its label feature by number only ("0".."9"), so the class
names are those of TFDS's `cifar10` (eval.py checks them against the run's).

All 95 configs come from one archive of 2.9 GB on zenodo.org; `tfds build
cifar10_corrupted --data_dir=DIR` on a connected machine prepares them all, and
eval.py's --tfds_data_dir=DIR reads them offline.
"""

import tensorflow_datasets as tfds

from data import sources

TFDS_NAME = "cifar10_corrupted"
# The 15 corruptions of the paper's benchmark, then its 4 "extra" ones (held out there for
# validation), as TFDS names them (the paper's glass_blur is frosted_glass_blur,
# elastic_transform is elastic).
BENCHMARK_CORRUPTIONS = (
  "gaussian_noise", "shot_noise", "impulse_noise",
  "defocus_blur", "frosted_glass_blur", "motion_blur", "zoom_blur",
  "snow", "frost", "fog", "brightness",
  "contrast", "elastic", "pixelate", "jpeg_compression",
)  # fmt: skip
EXTRA_CORRUPTIONS = ("gaussian_blur", "saturate", "spatter", "speckle_noise")
CORRUPTIONS = BENCHMARK_CORRUPTIONS + EXTRA_CORRUPTIONS
SEVERITIES = (1, 2, 3, 4, 5)
DOWNLOAD_HOST = "zenodo.org"  # Where TFDS downloads CIFAR-10-C.tar from.

OFFLINE_HELP = """\
CIFAR-10-C ({config}) is not prepared in {data_dir} and cannot be downloaded \
(cannot reach {host}). On a machine with network access run \
`tfds build {name} --data_dir=DIR` (all 95 configs from one 2.9 GB download; \
--config={config_name} for one), copy DIR over and pass --tfds_data_dir=DIR."""


def select(corruptions, severities):
  """The (corruption, severity) pairs that eval.py's --corruptions and --severities ask for.

  Args:
    corruptions: corruption names, or ["all"] for CORRUPTIONS.
    severities: severities as strings or ints, each in 1..5.

  Returns:
    (corruptions tuple, severities tuple of int), in CORRUPTIONS' and ascending order.

  Raises:
    sources.DataError: an unknown name or severity (the message lists the known ones).
  """
  names = CORRUPTIONS if list(corruptions) == ["all"] else tuple(corruptions)
  unknown = [name for name in names if name not in CORRUPTIONS]
  if unknown or not names:
    raise sources.DataError(
      f"--corruptions: unknown {', '.join(unknown) or 'empty list'}; "
      f"'all' or some of: {', '.join(CORRUPTIONS)}."
    )
  try:
    levels = sorted({int(level) for level in severities})
  except ValueError:
    levels = []
  if not levels or not set(levels) <= set(SEVERITIES):
    raise sources.DataError(f"--severities={','.join(map(str, severities))}: each in 1..5.")
  return tuple(name for name in CORRUPTIONS if name in names), tuple(levels)


def tfds_name(corruption, severity):
  """The TFDS name of one corruption at one severity: 'cifar10_corrupted/fog_3'."""
  return f"{TFDS_NAME}/{corruption}_{severity}"


def check_available(corruptions, severities, tfds_data_dir=None):
  """Fails at once, before any work, when a config is neither prepared nor downloadable.

  TFDS would otherwise retry the download for minutes on an offline machine.

  Raises:
    sources.DataError: with OFFLINE_HELP (what to build where, and the flag to pass).
  """
  for corruption in corruptions:
    for severity in severities:
      builder = tfds.builder(tfds_name(corruption, severity), data_dir=tfds_data_dir)
      if builder.is_prepared():
        continue
      if not sources.download_host_reachable(DOWNLOAD_HOST):
        raise sources.DataError(
          OFFLINE_HELP.format(
            config=tfds_name(corruption, severity),
            config_name=f"{corruption}_{severity}",
            data_dir=builder.data_dir,
            host=DOWNLOAD_HOST,
            name=TFDS_NAME,
          )
        )
      return  # Reachable: TFDS downloads the one archive for every config.


def load(corruption, severity, tfds_data_dir=None):
  """The 10,000 corrupted test images of one config.

  Returns:
    (images uint8 [N, 32, 32, 3], labels int32 [N]): CIFAR-10's test labels, in order.

  Raises:
    sources.DataError: the data cannot be read (sources.load_split).
  """
  images, labels, _ = sources.load_split(tfds_name(corruption, severity), "test", tfds_data_dir)
  return images, labels
