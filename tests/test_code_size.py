"""The size habits of STYLE.md, held by CI instead of review: a reader can hold a file
and a function in their head."""

import ast
import glob
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_FILE_LINES = 300  # Library files, programs and tools; the tests are lists of cases.
MAX_FUNCTION_LINES = 80  # Decorators and docstring included.
MAX_README_LINES = 250
SOURCES = sorted(
  os.path.relpath(path, REPO)
  for pattern in ("*.py", "resnet/**/*.py", "data/**/*.py", "tools/**/*.py")
  for path in glob.glob(os.path.join(REPO, pattern), recursive=True)
)


def _lines(path):
  with open(os.path.join(REPO, path)) as file:
    return file.read().splitlines()


@pytest.mark.parametrize("path", SOURCES)
def test_files_and_functions_stay_small(path):
  lines = _lines(path)
  assert len(lines) <= MAX_FILE_LINES, f"{path}: {len(lines)} lines; split it by concern."
  tree = ast.parse("\n".join(lines))
  for node in ast.walk(tree):
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
      start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
      length = node.end_lineno - start + 1
      assert length <= MAX_FUNCTION_LINES, f"{path}:{start} {node.name}: {length} lines."


def test_the_readme_stays_a_readme():
  assert len(_lines("README.md")) <= MAX_README_LINES, "Move the details to docs/."
