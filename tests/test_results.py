"""The results table: read from run directories, seeds collapsed, configs recognised."""

import dataclasses
import glob
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

import train
from resnet import config as config_lib
from resnet import files, machine, models, report, run_record
from resnet.tools import curves, results
from tests.test_train import REPO, debug_config

eval_main = importlib.import_module("eval")


def recorded(flagfile):
  """The config a new run of `flagfile` records: --stride2_padding=auto resolved."""
  return dict(results.read_flagfile(flagfile), stride2_padding="symmetric")


def test_a_run_is_matched_to_its_config_and_a_shortened_schedule_is_named(tmp_path):
  paper = recorded("configs/resnet20_paper.cfg")
  assert paper["optimizer"] == "sgd" and paper["learning_rate"] == 0.1 and paper["epochs"] == 182
  assert results.match_config(dict(paper, seed=3)) == ("resnet20_paper.cfg", {})
  assert results.match_config(dict(paper, epochs=50)) == ("resnet20_paper.cfg", {"epochs": 50})
  adam = recorded("configs/resnet20.cfg")
  assert results.match_config(adam) == ("resnet20.cfg", {})
  # A run made before --stride2_padding existed (no key) used Keras' "same": named.
  old_run = {key: value for key, value in adam.items() if key != "stride2_padding"}
  assert results.match_config(old_run) == ("resnet20.cfg", {"stride2_padding": "same"})
  # A flag the flagfile does not mention counts too (a run recorded before it existed: default).
  airbench = recorded("configs/airbench94.cfg")
  assert results.match_config(dict(airbench, whitening=False)) == (
    "airbench94.cfg",
    {"whitening": False},
  )
  assert results.match_config(dict(airbench, whitening=True)) == ("airbench94.cfg", {})
  assert airbench["nesterov"] is True and airbench["lookahead"] is True  # Bare booleans.
  # --precision=auto (the default, so also a flagfile without --precision) matches the
  # precision the machine chose; a precision the flagfile gives must be the run's.
  (tmp_path / "float32.cfg").write_text("--flagfile=configs/airbench94.cfg\n--precision=float32\n")
  for precision in ("float32", "mixed_bfloat16"):
    assert results.match_config(dict(adam, precision=precision)) == ("resnet20.cfg", {})
    chosen = dict(airbench, precision=precision)
    assert results.match_config(chosen) == ("airbench94.cfg", {})
  assert results.match_config(dict(airbench, precision="mixed_bfloat16"), str(tmp_path)) == (
    "float32.cfg",
    {"precision": "mixed_bfloat16"},
  )
  shorter = tmp_path / "shorter.cfg"  # airbench94.cfg's flags, then its own.
  shorter.write_text("--flagfile=configs/airbench94.cfg\n--epochs=7\n--nolookahead\n")
  assert recorded(str(shorter)) == dict(airbench, epochs=7, lookahead=False)


@pytest.mark.parametrize("path", sorted(glob.glob("configs/*.cfg")), ids=os.path.basename)
def test_config_files_read_as_absl_reads_them_and_match_themselves(path):
  # Bare booleans (--nesterov) and nested --flagfile lines (fast.cfg) included.
  flag_values = flags.FlagValues()
  config_lib.define_flags(flag_values)
  flag_values(["train.py", f"--flagfile={path}", "--model_dir=/tmp/unused"])
  config = dataclasses.asdict(config_lib.config_from_flags(flag_values))
  values = results.read_flagfile(path)
  assert values and {key: config[key] for key in values} == values
  assert results.match_config(config) == (os.path.basename(path), {})


@pytest.fixture(scope="module")
def two_seeds(image_folder, tmp_path_factory):
  """One recipe, two seeds: one finished, the other stopped after 1 of its 2 epochs."""
  config = debug_config(image_folder, epochs=2)
  directories = []
  for seed, epochs in ((0, 2), (1, 1)):
    directory = str(tmp_path_factory.mktemp(f"seed{seed}"))
    train.train_and_evaluate(dataclasses.replace(config, seed=seed, epochs=epochs), directory)
    directories.append(directory)
  # The second run was asked for 2 epochs and stopped after the first (as a kill leaves it).
  record = run_record.read_run_record(directories[1])
  record["config"]["epochs"] = 2
  files.write_json(os.path.join(directories[1], run_record.RUN_RECORD), record)
  eval_main.evaluate_model_dir(directories[0], "test", batch_size=8, tta="flip")
  for directory, tta in zip(directories, ("flip", "flip_translate"), strict=True):
    eval_main.evaluate_model_dir(directory, "validation", batch_size=8, tta=tta)
  return directories


def test_seeds_of_one_recipe_collapse_and_unfinished_runs_say_so(two_seeds):
  runs = [results.summarize_run(directory) for directory in two_seeds]
  assert [(run["step"], run["total_steps"]) for run in runs] == [(6, 6), (3, 6)]
  header, rule, row = results.results_table(runs).splitlines()[:3]
  assert header.startswith("| config | model | optimizer | steps trained |") and rule
  assert "| 6 of 6; 3 of 6 (unfinished) | 0, 1 (2) |" in row
  accuracies = [run["validation_accuracy"] for run in runs]
  assert all(0 <= accuracy <= 1 for accuracy in accuracies)
  expected = f"{100 * np.mean(accuracies):.2f} ± {100 * np.std(accuracies, ddof=1):.2f}"
  assert f"| {expected} |" in row
  own = report.dataset_slug(runs[0]["config"]["dataset"])  # folder-<name>-<8 hex digits>.
  assert own.startswith("folder-") and len(own.rsplit("-", 1)[1]) == 8
  test, tta = runs[0]["test_accuracy"][own], runs[0]["test_accuracy_tta"][own]
  assert f"| {own} {100 * test:.2f} | {own} {100 * tta:.2f} |" in row  # Only seed 0 evaluated.
  # Validation with test-time augmentation: both seeds, each with the mode it was run with.
  assert [run["validation_tta"] for run in runs] == ["flip", "flip_translate"]
  with_tta = [run["validation_accuracy_tta"] for run in runs]
  mean = f"{100 * np.mean(with_tta):.2f} ± {100 * np.std(with_tta, ddof=1):.2f}"
  assert f"| {mean} (flip, flip_translate) |" in row
  # 3 x forward FLOPs x images trained: 6 and 3 steps of 16 images.
  flops = 3 * models.forward_flops_per_image(models.create_model("resnet8")) * 16
  assert [run["training_flops"] for run in runs] == [6 * flops, 3 * flops]
  assert f"| {4.5 * flops:.2e} |" in row
  assert runs[0]["images_per_second"] > 0 and runs[0]["device"] == machine.cpu_label()
  assert runs[0]["seconds"] > 0


def test_the_parity_table_sets_the_reference_s_seeds_beside_ours(two_seeds, tmp_path, capsys):
  # tools/reference_parity.py summarize, on two reference runs (its result.json) and ours.
  path = os.path.join(REPO, "tools", "reference_parity.py")
  spec = importlib.util.spec_from_file_location("reference_parity", path)
  reference_parity = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(reference_parity)
  for seed, accuracies in enumerate([[0.5, 0.8, 0.7], [0.6, 0.9, 0.9]]):
    history = [{"epoch": epoch + 1, "validation_accuracy": a} for epoch, a in enumerate(accuracies)]
    (tmp_path / f"ref_s{seed}").mkdir()
    (tmp_path / f"ref_s{seed}" / "result.json").write_text(json.dumps({"history": history}))
  reference_parity.summarize(
    [f"reference={tmp_path / 'ref_s0'},{tmp_path / 'ref_s1'}", f"ours={two_seeds[0]}"]
  )
  header, _, reference_row, ours_row = capsys.readouterr().out.splitlines()
  assert header.startswith("| runs | seeds (n) | epochs | best val acc % |")
  # Best 80 and 90, last 70 and 90: mean ± sample standard deviation.
  assert reference_row == "| reference | 2 | 3 | 85.00 ± 7.07 | +0.00 | 80.00 ± 14.14 | +0.00 |"
  curve = [row["validation_accuracy"] * 100 for row in curves.read_curve(two_seeds[0])]
  best, last = max(curve), curve[-1]
  assert ours_row == (  # One run: no spread to show.
    f"| ours | 1 | {len(curve)} | {best:.2f} | {best - 85:+.2f} | {last:.2f} | {last - 80:+.2f} |"
  )
  (tmp_path / "ref_s2").mkdir()
  (tmp_path / "ref_s2" / "checkpoint.pt").write_bytes(b"")  # Under way: no result.json yet.
  with pytest.raises(SystemExit, match="ref_s2 is a reference run not finished yet"):
    reference_parity.summarize([f"reference={tmp_path / 'ref_s2'}"])


def test_wall_time_of_a_paused_run_is_marked(two_seeds):
  run = results.summarize_run(two_seeds[0])
  # 6 steps of 16 images at 96 images/s: 1 s of training.
  steady, paused = dict(run, images_per_second=96.0, seconds=1.2), dict(run, seconds=1.6)
  assert "†" not in results.results_table([steady])  # Validation and tracing: under 1.5x.
  table = results.results_table([dict(paused, images_per_second=96.0)]).splitlines()
  assert "| 0 min † |" in table[2] and table[-1] == results.INTERRUPTED_NOTE


def test_a_directory_that_is_not_a_run_is_one_line_and_a_non_zero_exit(tmp_path):
  result = subprocess.run(
    [sys.executable, "-m", "resnet.tools.results", str(tmp_path)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
    f"resnet.tools.results: error: {tmp_path} is not a training run: it has no run.json."
  )
