"""The machine: waves, code snapshots, the ledger, the controller and its scheduling, the daemon.

Layer rule: may import `fleet.backends` and the base modules (`fleet.config`, `fleet.types`,
`fleet.errors`, `fleet.workspace`, `fleet.task`); never `fleet.research`, `fleet.observe` or `fleet.cli`.
"""
