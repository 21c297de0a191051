"""skyfleet: run hundreds of short training experiments in parallel on a fleet of GPU clusters."""
from __future__ import annotations

__version__ = "0.1.0"
