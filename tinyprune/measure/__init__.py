"""Measurement: MACs, memory, latency. Functions return numbers and records; they print nothing."""
