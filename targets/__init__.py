"""The microcontroller target files, one TOML each (schema: SCHEMA.md), read by tinyprune.targets.

They live in targets/ at the repository root and install as this package (see setup.py).
"""
