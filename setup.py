"""Only the package layout lives here (everything else: pyproject.toml).

The target files sit in targets/ at the repository root, beside tinyprune/, tests/ and
benchmarks/, and install as the package tinyprune.target_files, so a wheel carries them.
"""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["tinyprune*"]) + ["tinyprune.target_files"],
      package_dir={"tinyprune.target_files": "targets"})
