"""Errors the device client raises for local problems (files, configuration)."""


class DeviceError(Exception):
    """Something on the device side is wrong: a missing file, an unsupported format, a bad setting.

    ``exit_code`` is what ``splitasr-device`` exits with: 1, the work failed.
    """

    exit_code = 1


class UsageError(DeviceError):
    """The command line or the settings cannot work as given: exit code 2."""

    exit_code = 2
