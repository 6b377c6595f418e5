"""The one error type users see: the CLI prints its message on one line and exits with code 2."""


class UserError(Exception):
    """A problem with the user's input, files or machine, stated in one line."""
