r"""Trains the reference PyTorch ResNet (akamaster/pytorch_resnet_cifar10) on our data split.

The parity check of docs/results.md: the reference's network and recipe, trained by a loop
that follows its trainer.py, on exactly the 45,000/5,000 split train.py uses, so that its
validation accuracy can be set beside ours. The reference's code is imported from the
checkout given (`--reference`), never copied here; PyTorch lives in its own environment,
not in this project's dependencies.

  # 1. In this project's environment: our split, as train.py makes it, into one .npz file.
  python tools/reference_parity.py export \
      --dataset=folder:../shared/data/cifar10-jpeg75 --output=~/runs/parity/split.npz
  # 2. In an environment with PyTorch (python3 -m venv ~/torchenv &&
  #    ~/torchenv/bin/pip install torch numpy): the reference's recipe, 32 epochs.
  ~/torchenv/bin/python tools/reference_parity.py train --reference=../shared/reference \
      --split=~/runs/parity/split.npz --epochs=32 --seed=0 --output_dir=~/runs/parity/ref_s0
  # 3. The table: validation accuracy of each group of seeds, the first group the baseline.
  python tools/reference_parity.py summarize reference=~/runs/parity/ref_s0,~/runs/parity/ref_s1 \
      ours=~/runs/parity/ours_symmetric_s0,~/runs/parity/ours_symmetric_s1

What follows the reference's trainer.py: its resnet.py model and initialisation (seeded by
`--seed`), SGD with momentum 0.9 and weight decay 1e-4 on every parameter, learning rate 0.1
divided by 10 at 50% and 75% of the epochs (its MultiStepLR at 100 and 150 of 200, stepped
per epoch), batch 128 with the last partial batch kept, a new shuffle each epoch, random
horizontal flips and 4-pixel zero-padded random crops, inputs x / 255 normalised with its
ImageNet mean and std, cross-entropy. What differs: the data (our split's arrays instead of
torchvision's CIFAR-10 download), the device (CPU), and the validation split (ours, where it
validates on the test set). Each epoch ends with a checkpoint; the same command resumes.
"""

import argparse
import importlib.util
import json
import os
import sys
import time

import numpy as np

# This checkout, whose `data` and `resnet` the project-side commands import (nothing is
# installed: the project runs from its checkout).
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The reference's normalisation (its trainer.py), for x / 255.
REFERENCE_MEAN = (0.485, 0.456, 0.406)
REFERENCE_STD = (0.229, 0.224, 0.225)


def project_module(name):
  """A module of this checkout (e.g. "data.sources"), imported when a project-side command
  first needs it: the reference's environment (PyTorch, no TensorFlow) never imports one."""
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  return importlib.import_module(name)


def export_split(dataset, validation_size, output):
  """Writes train.py's training and validation arrays of `dataset` to the .npz `output`."""
  sources = project_module("data.sources")

  train, validation, class_names, _ = sources.load_train_and_validation(dataset, validation_size)
  os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
  np.savez(
    output,
    train_images=train[0],
    train_labels=train[1],
    validation_images=validation[0],
    validation_labels=validation[1],
    class_names=np.array(class_names),
  )
  print(f"Wrote {output}: {len(train[1])} training and {len(validation[1])} validation images.")


def import_reference_resnet(reference_dir):
  """The reference's resnet.py module, imported from its checkout."""
  path = os.path.join(reference_dir, "resnet.py")
  if not os.path.isfile(path):
    sys.exit(f"reference_parity.py: error: no resnet.py in --reference={reference_dir}")
  spec = importlib.util.spec_from_file_location("reference_resnet", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def to_inputs(torch, images):
  """uint8 [N, 32, 32, 3] -> float32 [N, 3, 32, 32], normalised as the reference does."""
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
  mean = torch.tensor(REFERENCE_MEAN).view(1, 3, 1, 1)
  std = torch.tensor(REFERENCE_STD).view(1, 3, 1, 1)
  return (x - mean) / std


def augment(torch, batch, generator):
  """torchvision's RandomHorizontalFlip and RandomCrop(32, padding=4), per image, on
  normalised [B, 3, 32, 32] inputs: the padding is the normalised value of black, as
  torchvision pads the [0, 1] image with zeros before the reference normalises it."""
  size = batch.shape[0]
  black = ((torch.zeros(3) - torch.tensor(REFERENCE_MEAN)) / torch.tensor(REFERENCE_STD)).view(
    1, 3, 1, 1
  )
  padded = black.expand(size, 3, 40, 40).clone()
  padded[:, :, 4:36, 4:36] = batch
  offsets = torch.randint(0, 9, (size, 2), generator=generator)
  flips = torch.rand(size, generator=generator) < 0.5
  out = torch.empty_like(batch)
  for index in range(size):
    dy, dx = int(offsets[index, 0]), int(offsets[index, 1])
    crop = padded[index, :, dy : dy + 32, dx : dx + 32]
    out[index] = crop.flip(-1) if flips[index] else crop
  return out


def evaluate(torch, model, inputs, labels, batch_size=500):
  """(accuracy, mean cross-entropy) of `model` in eval mode over all of `inputs`."""
  model.eval()
  correct, loss_sum = 0, 0.0
  with torch.no_grad():
    for start in range(0, len(labels), batch_size):
      logits = model(inputs[start : start + batch_size])
      target = labels[start : start + batch_size]
      loss_sum += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
      correct += int((logits.argmax(1) == target).sum())
  return correct / len(labels), loss_sum / len(labels)


def train_epoch(torch, model, optimizer, inputs, labels, batch_size, generator):
  """One epoch in a fresh order drawn from `generator`; returns (mean loss, accuracy)."""
  order = torch.randperm(len(labels), generator=generator)
  model.train()
  loss_sum, correct = 0.0, 0
  for start in range(0, len(order), batch_size):  # The last partial batch kept, as its loader.
    index = order[start : start + batch_size]
    logits = model(augment(torch, inputs[index], generator))
    loss = torch.nn.functional.cross_entropy(logits, labels[index])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    loss_sum += float(loss.detach()) * len(index)
    correct += int((logits.argmax(1) == labels[index]).sum())
  return loss_sum / len(order), correct / len(order)


def write_json(path, value):
  """Writes `value` to `path` atomically (a temporary file, then a rename)."""
  with open(path + ".tmp", "w") as file:
    json.dump(value, file, indent=2)
  os.replace(path + ".tmp", path)


def train(args):
  """Trains the reference's model with its recipe on the split; resumes from output_dir."""
  import torch  # The reference's environment only.

  torch.set_num_threads(args.threads or os.cpu_count())
  reference = import_reference_resnet(os.path.expanduser(args.reference))
  split = np.load(os.path.expanduser(args.split))
  inputs = {name: to_inputs(torch, split[f"{name}_images"]) for name in ("train", "validation")}
  labels = {
    name: torch.from_numpy(split[f"{name}_labels"].astype(np.int64))
    for name in ("train", "validation")
  }
  torch.manual_seed(args.seed)  # The reference's initialisation draws from the global RNG.
  model = getattr(reference, args.model)()
  optimizer = torch.optim.SGD(
    model.parameters(), args.learning_rate, momentum=0.9, weight_decay=args.weight_decay
  )
  milestones = [round(args.epochs * 0.5), round(args.epochs * 0.75)]
  scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones)
  output_dir = os.path.expanduser(args.output_dir)
  os.makedirs(output_dir, exist_ok=True)
  checkpoint_path = os.path.join(output_dir, "checkpoint.pt")
  state = dict(history=[], epoch=0)
  if os.path.exists(checkpoint_path):
    state = torch.load(checkpoint_path, weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    print(f"Resumed at epoch {state['epoch']}.")
  history = state["history"]
  for epoch in range(state["epoch"], args.epochs):
    # The data order and augmentation of an epoch depend on (seed, epoch) only: exact resume.
    generator = torch.Generator().manual_seed(args.seed * 1000 + epoch)
    started, learning_rate = time.time(), optimizer.param_groups[0]["lr"]
    train_loss, train_accuracy = train_epoch(
      torch, model, optimizer, inputs["train"], labels["train"], args.batch_size, generator
    )
    scheduler.step()
    seconds = time.time() - started
    accuracy, loss = evaluate(torch, model, inputs["validation"], labels["validation"])
    history.append(
      dict(
        epoch=epoch + 1,
        learning_rate=learning_rate,
        train_loss=train_loss,
        train_accuracy=train_accuracy,
        validation_accuracy=accuracy,
        validation_loss=loss,
        seconds=seconds,
        images_per_second=len(labels["train"]) / seconds,
      )
    )
    print(json.dumps(history[-1]), flush=True)
    objects = dict(model=model, optimizer=optimizer, scheduler=scheduler)
    state = {name: value.state_dict() for name, value in objects.items()}
    torch.save(dict(state, history=history, epoch=epoch + 1), checkpoint_path + ".tmp")
    os.replace(checkpoint_path + ".tmp", checkpoint_path)  # Atomic: a kill keeps the last.
  best = max(history, key=lambda entry: entry["validation_accuracy"])
  write_json(
    os.path.join(output_dir, "result.json"),
    dict(
      reference=os.path.abspath(os.path.expanduser(args.reference)),
      model=args.model,
      num_parameters=sum(p.numel() for p in model.parameters()),
      seed=args.seed,
      epochs=args.epochs,
      milestones=milestones,
      torch=torch.__version__,
      threads=torch.get_num_threads(),
      best_validation_accuracy=best["validation_accuracy"],
      best_epoch=best["epoch"],
      final_validation_accuracy=history[-1]["validation_accuracy"],
      history=history,
    ),
  )
  print(f"best validation accuracy {best['validation_accuracy']:.4f} at epoch {best['epoch']}")


def validation_curve(run_dir):
  """[validation accuracy per epoch] of a reference run (result.json) or one of ours."""
  result_path = os.path.join(run_dir, "result.json")
  if os.path.exists(result_path):
    with open(result_path) as file:
      return [entry["validation_accuracy"] for entry in json.load(file)["history"]]
  if os.path.exists(os.path.join(run_dir, "checkpoint.pt")):  # Written each epoch.
    sys.exit(f"reference_parity.py: error: {run_dir} is a reference run not finished yet")
  curves = project_module("resnet.tools.curves")
  return [row["validation_accuracy"] for row in curves.read_curve(run_dir)]


def summarize(groups):
  """Prints a Markdown table: per group of runs (label=DIR,DIR,...), the best and the last
  epoch's validation accuracy, mean ± std over its runs (seeds), and each against the
  first group's."""
  results = project_module("resnet.tools.results")
  rows, first = [], None
  for group in groups:
    label, _, dirs = group.partition("=")
    run_curves = [validation_curve(os.path.expanduser(d)) for d in dirs.split(",")]
    best = [max(curve) for curve in run_curves]  # Fractions, as results.mean_std takes.
    last = [curve[-1] for curve in run_curves]
    epochs = sorted({len(curve) for curve in run_curves})
    first = first or (np.mean(best), np.mean(last))
    rows.append(
      f"| {label} | {len(run_curves)} | {'/'.join(map(str, epochs))} | "
      f"{results.mean_std(best)} | {100 * (np.mean(best) - first[0]):+.2f} | "
      f"{results.mean_std(last)} | {100 * (np.mean(last) - first[1]):+.2f} |"
    )
  print(
    "| runs | seeds (n) | epochs | best val acc % | vs first | last epoch's val acc % | vs first |"
  )
  print("| --- | --- | --- | --- | --- | --- | --- |")
  print("\n".join(rows))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  export = commands.add_parser("export", help="our split to an .npz (this project's env)")
  export.add_argument("--dataset", required=True, help="as train.py's --dataset")
  export.add_argument("--validation_size", type=int, default=5000)
  export.add_argument("--output", required=True)
  run = commands.add_parser("train", help="train the reference on the split (PyTorch env)")
  run.add_argument("--reference", required=True, help="checkout holding the reference resnet.py")
  run.add_argument("--split", required=True, help="the .npz written by export")
  run.add_argument("--model", default="resnet20")
  run.add_argument("--epochs", type=int, default=32)
  run.add_argument("--batch_size", type=int, default=128)
  run.add_argument("--learning_rate", type=float, default=0.1)
  run.add_argument("--weight_decay", type=float, default=1e-4)
  run.add_argument("--seed", type=int, default=0)
  run.add_argument("--threads", type=int, default=0, help="torch threads; 0 = all cores")
  run.add_argument("--output_dir", required=True)
  table = commands.add_parser("summarize", help="the parity table (this project's env)")
  table.add_argument("groups", nargs="+", help="LABEL=RUN_DIR,RUN_DIR,... (ours or reference)")
  args = parser.parse_args()
  if args.command == "summarize":
    summarize(args.groups)
  elif args.command == "export":
    export_split(args.dataset, args.validation_size, os.path.expanduser(args.output))
  else:
    train(args)


if __name__ == "__main__":
  main()
