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

A name may also point to an `Extension`: an object whose `extend(workspace, ledger, backend, config)`
returns what it adds to the controller it is given to (`Extensions`): `Watcher`s, called every cycle
once results are recorded and before stopped experiments' jobs are cancelled, with the controller
(early stopping reads running jobs' logs through its backend; a search tells its study), and
`WaveSource`s by wave kind, which make a wave's experiments when the scheduler gives it a slot
(`fleet.core.placement`; a search wave).
"""
from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from fleet.backends.base import Backend
from fleet.config import FleetConfig
from fleet.core.ledger import Ledger
from fleet.core.placement import WaveSource
from fleet.workspace import Workspace

if TYPE_CHECKING:
    from fleet.core.controller import Controller

log = logging.getLogger("fleet.core.hooks")

CycleHook = Callable[[Workspace, Ledger, FleetConfig, "Sequence[str] | None"], int]


class Watcher(Protocol):
    def watch(self, controller: Controller) -> None:
        """Once per cycle, after results are recorded, before stopped experiments' jobs are cancelled."""


@dataclass(frozen=True)
class Extensions:
    """What an `Extension` adds to a controller."""

    watchers: Sequence[Watcher] = ()
    sources: Mapping[str, WaveSource] = field(default_factory=dict)  # wave kind -> its source


class Extension(Protocol):
    def extend(self, workspace: Workspace, ledger: Ledger, backend: Backend, config: FleetConfig) -> Extensions:
        """What to add to a controller over this workspace, ledger and backend."""


def split_hooks(loaded: Sequence[Any]) -> tuple[list[CycleHook], list[Extension]]:
    """Named hooks as (cycle hooks, extensions): an object with `extend` is an extension."""
    extensions = [h for h in loaded if hasattr(h, "extend")]
    return [h for h in loaded if not hasattr(h, "extend")], extensions


def load_hook(name: str) -> CycleHook | Extension:
    """ "package.module:name" -> the function (a cycle hook) or object (an extension) it names."""
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
