"""The error tree. Each class carries the exit code the CLI returns for it (see README)."""


class TinypruneError(Exception):
    """Base class: a problem the user can act on. The message is one line."""

    exit_code = 1


class BudgetExceeded(TinypruneError):
    """A model outgrew its size/latency/accuracy budget (`tinyprune check`)."""

    exit_code = 1


class InputError(TinypruneError):
    """Bad input: a file, an option or data that cannot be used as given."""

    exit_code = 2


class ConfigError(InputError):
    """An option or a config/target file is invalid."""


class UnsupportedModel(InputError):
    """The model file cannot be loaded (missing, empty, corrupt, wrong format, unsafe)."""


class UnsafePickle(UnsupportedModel):
    """The pickle needs globals outside the allow-list; loading it would run its code."""


class UnsafeCode(UnsupportedModel):
    """The file is TorchScript: loading and running it runs its own code."""


class ResourceLimit(UnsupportedModel):
    """Reading or analysing an untrusted model went past its time limit or memory cap."""


class DataError(InputError):
    """The data does not fit the model (shape, labels, size)."""


class ExportError(TinypruneError):
    """A conversion step (ONNX, TFLite, TFLM) failed."""

    exit_code = 3


class UnsupportedOp(ExportError):
    """The model uses an operator the target runtime lacks."""


INTERNAL_ERROR_EXIT = 70
