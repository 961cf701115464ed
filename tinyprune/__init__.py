"""tinyprune: information-driven pruning and deployment of PyTorch models to microcontrollers.

Importing the package is cheap on purpose: torch, TensorFlow and the converters are only
imported by the stages that need them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
