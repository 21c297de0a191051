"""skyfleet: run hundreds of short training experiments in parallel on a fleet of GPU clusters.

Layers, each importing only those below it (tests/test_layering.py keeps it so):
  cli -> observe -> research -> core -> backends -> base modules (config, types, errors, workspace, task)
"""
from __future__ import annotations

__version__ = "0.1.0"
