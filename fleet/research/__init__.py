"""The science: hardware normalization, statistics, promotion (validation verdicts) and ablation.

Layer rule: decisions are pure functions over plain records; may import `fleet.core`, `fleet.backends`
and the base modules, never `fleet.observe` or `fleet.cli`.
"""
