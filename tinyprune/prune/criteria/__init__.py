"""The pruning criteria, one module each. Importing the package registers every module in it,
so a new criterion is one new file here (see ``tinyprune.prune.protocol``). Modules import
torch only inside methods: listing criteria and validating flags stays instant."""

import importlib
import pkgutil

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    importlib.import_module(f"{__name__}.{_info.name}")
