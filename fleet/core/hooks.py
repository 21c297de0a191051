"""Cycle hooks: decisions of the layers above the controller, run once per controller cycle.

The controller (this layer) cannot import the research layer, yet a sequential validation must add
seed pairs as results arrive, unattended. So the command line names the hooks when it starts a
controller (`fleet.core.daemon`, `--hook=module:function`), and the controller calls each once per
cycle, after results are recorded and before work is placed, with the experiments that just
finished (the first call: None, look at everything, since a controller may have died between
recording a result and acting on it). A hook returns how many experiments it added.

A hook whose `every_cycle` attribute is true is called in every cycle, with an empty list when
nothing finished (backfill watches for room on the clusters, which also appears when clusters come
up); it must then be cheap when there is nothing to do.
"""
from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence

from fleet.config import FleetConfig
from fleet.core.ledger import Ledger
from fleet.workspace import Workspace

log = logging.getLogger("fleet.core.hooks")

CycleHook = Callable[[Workspace, Ledger, FleetConfig, "Sequence[str] | None"], int]


def load_hook(name: str) -> CycleHook:
    """ "package.module:function" -> the function."""
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


class HookRunner:
    """Calls the hooks: every cycle in which something finished, and once at the start."""

    def __init__(self, hooks: Sequence[CycleHook] = ()) -> None:
        self.hooks = tuple(hooks)
        self._started = False
        self._errors: set[str] = set()

    def run(self, workspace: Workspace, ledger: Ledger, config: FleetConfig, finished: Sequence[str]) -> int:
        quiet = self._started and not finished
        hooks = [h for h in self.hooks if getattr(h, "every_cycle", False)] if quiet else self.hooks
        if not hooks:
            return 0
        changed = list(finished) if self._started else None
        self._started = True
        added = 0
        for hook in hooks:
            try:
                added += hook(workspace, ledger, config, changed)
            except Exception as exc:  # a hook's bug must not stop the fleet; say it once
                if repr(exc) not in self._errors:
                    self._errors.add(repr(exc))
                    log.exception("cycle hook %s failed", getattr(hook, "__name__", hook))
        return added
