"""What the research layer adds to every controller: search waves and early stopping.

The command line names `RESEARCH` among the controller's hooks (`fleet.cli.context.CONTROLLER_HOOKS`),
so the background controller and `fleet controller run` both get it (`fleet.core.hooks`): search waves
make their experiments when the scheduler gives them a slot and tell their study each result
(`search_hook`), and early stopping stops runs that clearly trail (`early_stop_hook`).
"""
from __future__ import annotations

from fleet.backends.base import Backend
from fleet.config import FleetConfig
from fleet.core.hooks import Extensions
from fleet.core.ledger import Ledger
from fleet.research.early_stop_hook import EarlyStopHook
from fleet.research.search_hook import SEARCH_KIND, SearchDriver
from fleet.workspace import Workspace


class ResearchExtension:
    def extend(self, workspace: Workspace, ledger: Ledger, backend: Backend, config: FleetConfig) -> Extensions:
        search = SearchDriver(workspace, ledger, config)
        # Early stopping first: a trial it prunes is told to the study in the same cycle.
        return Extensions(watchers=(EarlyStopHook(workspace, ledger, backend, config), search),
                          sources={SEARCH_KIND: search})


RESEARCH = ResearchExtension()

__all__ = ["RESEARCH", "ResearchExtension"]
