"""Measurement: MACs, memory, energy, latency. Functions return numbers and records; they print nothing.

``measure_file`` / ``measure_stage`` (in ``core``) put it all together; see ``macs`` for what a
MAC is, ``energy`` for the cost model's assumptions and ``latency`` for prediction and timing.
"""


def measure_file(*args, **kwargs):
    from tinyprune.measure.core import measure_file as f

    return f(*args, **kwargs)


def measure_stage(*args, **kwargs):
    from tinyprune.measure.core import measure_stage as f

    return f(*args, **kwargs)
