"""Errors raised for bad user input (files, labels, keys).

The CLI turns every ``InputError`` into a single line on stderr and exit status 2, so the
message must name the file or key and the problem on its own.
"""


class InputError(ValueError):
    """Bad user input: a file, a label or a key that cannot be used as given."""


class UnknownLabelError(InputError):
    """A vertebra label name or id that the schema does not know."""
