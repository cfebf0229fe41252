"""The one exception type for mistakes a user can fix; scripts print its message as one line."""


class UserError(Exception):
    """Bad input, flags, files or environment; the message names the culprit and what to do."""
