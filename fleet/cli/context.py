"""What every command needs: the workspace, its config, the ledger and the output sink."""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

from fleet.backends import make_backend
from fleet.backends.base import Backend
from fleet.cli.output import Sink
from fleet.config import FleetConfig, load_config
from fleet.core.ledger import Ledger
from fleet.errors import InputError
from fleet.types import ClusterState
from fleet.workspace import Workspace

# The controller's cycle hooks and extensions, by name (it runs in its own process; core never imports
# the layers above): sequential validation adds seed pairs to promote waves as their results arrive;
# the research extension makes search waves' experiments and stops clearly trailing runs early;
# backfill queues useful work where a cluster would go idle (`backfill:` in fleet.yaml).
CONTROLLER_HOOKS = ("fleet.research.sequential:extend_waves", "fleet.research.extensions:RESEARCH",
                    "fleet.research.backfill:backfill")


@dataclass
class Context:
    workspace: Workspace
    sink: Sink
    backend_flag: str | None = None

    @cached_property
    def config(self) -> FleetConfig:
        return load_config(self.workspace.root)

    @cached_property
    def ledger(self) -> Ledger:
        self.workspace.ensure()
        return Ledger(self.workspace.ledger_path)

    def backend_name(self) -> str:
        """--backend, else FLEET_BACKEND, else what this workspace already uses, else local."""
        chosen = self.backend_flag or os.environ.get("FLEET_BACKEND")
        current = self.ledger.get_meta("backend")
        if chosen is None:
            return current or "local"
        chosen = "sky" if chosen == "skypilot" else chosen
        if current and chosen != current and self.ledger.clusters([ClusterState.UP]):
            raise InputError(
                f"--backend is {chosen!r}, but this workspace's clusters run on {current!r}; "
                f"tear them down first with `fleet down --all -y`, or use --backend {current}"
            )
        return chosen

    def backend(self, name: str | None = None) -> Backend:
        return make_backend(name or self.backend_name(), self.workspace, self.config)
