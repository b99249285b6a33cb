"""One base class for the errors a user can act on: train.py and eval.py catch only it."""

import importlib
import inspect
import pkgutil

import pytest

import data
import resnet
from resnet import errors

# Errors that never reach the user as they are: torch_format's is wrapped into
# import_reference's, which says which file and what to do.
INTERNAL = {"FormatError"}


def _error_classes():
  for package in (resnet, data):
    for module_info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
      module = importlib.import_module(module_info.name)
      for name, value in vars(module).items():
        if inspect.isclass(value) and value.__module__ == module.__name__:
          if issubclass(value, Exception) and name not in INTERNAL:
            yield f"{module.__name__}.{name}", value


@pytest.mark.parametrize("name, error_class", sorted(_error_classes()), ids=lambda x: str(x))
def test_every_error_of_ours_is_a_user_error(name, error_class):
  assert issubclass(error_class, errors.UserError), f"{name} should subclass UserError."


def test_one_line_message_keeps_the_first_line_or_names_the_type():
  assert errors.one_line_message(ValueError("first\nsecond")) == "first"
  assert errors.one_line_message(KeyError()) == "KeyError"
