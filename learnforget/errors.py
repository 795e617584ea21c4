"""The one exception type for user mistakes: the CLI prints it as one line and exits non-zero."""


class UserError(Exception):
    """A problem the user can fix (bad config key, missing file, malformed data line).

    The message must say what is wrong, where (file, line, field) and, when obvious, how to fix it.
    """
