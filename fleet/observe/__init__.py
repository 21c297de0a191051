"""What shows the fleet to people: leaderboard, dashboard, plot, report, cost.

Layer rule: reads the ledger and the verdicts; may import `fleet.research`, `fleet.core`,
`fleet.backends` and the base modules, never `fleet.cli`.
"""
