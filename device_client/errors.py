"""Errors the device client raises for local problems (files, configuration)."""


class DeviceError(Exception):
    """Something on the device side is wrong: a missing file, an unsupported format, a bad setting."""
