"""The one exception type for bad input: a user can fix it, and its message names the file, the
record and the field. The command lines print it as one line; any other exception is a bug and
keeps its traceback."""


class InputError(ValueError):
    """Bad input (a data file, a config, a submission, a dump): the message says where."""
