"""A validated wave as plain records: what `fleet.core.wave` produces and `fleet.core.expand` consumes.

Kept apart from both so that the file validator and the pure expansion depend on it, not on each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

Scalar = Union[bool, int, float, str]


@dataclass(frozen=True)
class ExplicitExperiment:
    overrides: dict[str, Scalar]
    description: str = ""


@dataclass(frozen=True)
class WaveSpec:
    """A validated wave, as plain data."""

    name: str
    tier: str = "screen"
    seeds: int | None = None  # None: the tier's seeds
    description: str = ""
    max_gpu_hours: float | None = None
    env: dict[str, Scalar] = field(default_factory=dict)
    grid: dict[str, list[Scalar]] = field(default_factory=dict)
    experiments: list[ExplicitExperiment] = field(default_factory=list)
    source: str = ""  # the file it came from, for messages
    warnings: tuple[str, ...] = ()  # not fatal (duplicate configurations); the CLI prints them on stderr

    def to_json(self) -> dict[str, Any]:
        """The wave as the user meant it, JSON-ready (for the ledger and `--json` output)."""
        return {
            "name": self.name, "tier": self.tier, "seeds": self.seeds, "description": self.description,
            "max_gpu_hours": self.max_gpu_hours, "env": dict(self.env),
            "grid": {k: list(v) for k, v in self.grid.items()},
            "experiments": [{**e.overrides, "description": e.description} if e.description else dict(e.overrides)
                            for e in self.experiments],
        }
