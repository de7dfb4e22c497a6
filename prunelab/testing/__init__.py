"""Test helpers for code that uses prunelab: :mod:`prunelab.testing.device_guard` finds GPU bugs on a CPU."""

from prunelab.testing.device_guard import DeviceGuard, Event, host_syncs_per_step

__all__ = ["DeviceGuard", "Event", "host_syncs_per_step"]
