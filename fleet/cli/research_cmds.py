"""`fleet promote` and `fleet ablate`: validating winners and measuring what each change is worth."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Filled in with promote/ablate once their statistics land."""
