"""The `fleet` command: `main.py` wires one module of commands per group; output goes through one sink.

Layer rule: the top layer; may import every other layer, and nothing imports it.
"""
