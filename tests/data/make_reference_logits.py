"""Makes tests/data/reference_resnet20_logits.npz: the reference implementation's own ResNet-20
logits on 4 fixed uint8 images, for tests/test_import_reference.py. Runs in a PyTorch
environment (PyTorch is no dependency of the project), with the reference's code and weights:

  ~/torchenv/bin/python tests/data/make_reference_logits.py ../shared/reference \
    tests/data/reference_resnet20_logits.npz

The reference (akamaster/pytorch_resnet_cifar10 at d5489e8995e81e91ce6b1d69dcc98ad579b0b153)
is imported from the directory given, not copied here. Its input transform is reproduced
below: ToTensor (x / 255) and Normalize with ImageNet's mean and std.
"""

import importlib.util
import os
import sys

import numpy as np
import torch

WEIGHTS = "resnet20-12fca82f.th"
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def images(seed=0):
  """uint8 [4, 32, 32, 3]: two of noise, two smooth (8x8 noise upsampled, a colour ramp)."""
  rng = np.random.default_rng(seed)
  noise = rng.integers(0, 256, (2, 32, 32, 3), np.uint8)
  blocks = rng.integers(0, 256, (1, 8, 8, 3), np.uint8).repeat(4, axis=1).repeat(4, axis=2)
  ramp = np.linspace(0, 255, 32)
  gradient = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], 255 - ramp[:, None]), -1)
  return np.concatenate([noise, blocks, gradient[None].astype(np.uint8)])


def main(reference_dir, output):
  # The reference's network, by path: the project's own `resnet` package has the same name.
  spec = importlib.util.spec_from_file_location("reference_resnet", f"{reference_dir}/resnet.py")
  resnet = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(resnet)

  checkpoint = torch.load(os.path.join(reference_dir, WEIGHTS), map_location="cpu")
  model = resnet.resnet20()
  model.load_state_dict({k.removeprefix("module."): v for k, v in checkpoint["state_dict"].items()})
  model.eval()
  uint8_images = images()
  # NHWC uint8 -> NCHW float32, as torchvision's ToTensor then Normalize.
  x = torch.from_numpy(uint8_images).permute(0, 3, 1, 2).float() / 255.0
  x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
  with torch.no_grad():
    logits = model(x).numpy()
  np.savez(output, images=uint8_images, logits=logits.astype(np.float32))
  print(f"Wrote {output}: logits {logits.shape}, argmax {logits.argmax(axis=1).tolist()}")


if __name__ == "__main__":
  main(os.path.abspath(sys.argv[1]), sys.argv[2])
