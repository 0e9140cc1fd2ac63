"""Print the supported denoisers and the registered techniques."""

from __future__ import annotations

import argparse

from .models import supported_model_classes
from .techniques import FIELDS, registered_techniques


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def run(args: argparse.Namespace) -> int:
    del args
    print("Supported denoisers:")
    for name in supported_model_classes():
        print(f"  {name}")
    print("Techniques:")
    for field_name in FIELDS:
        names = ", ".join(sorted(t.__name__ for t in registered_techniques(field_name))) or "-"
        print(f"  {field_name}: {names}")
    return 0
