"""`fleet watch`, `fleet plot`, `fleet report`: seeing what the fleet does and found."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Registers the observability commands (being written)."""
