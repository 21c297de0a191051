"""Test seams for external systems (a fake SkyPilot SDK that runs jobs as local processes).

Layer rule: stands in for an external system, so it may import only `fleet.backends` and the base modules.
"""
