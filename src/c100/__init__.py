"""c100: train, evaluate and use ResNet-class classifiers on CIFAR-100."""

__version__ = "0.1.0"


class UserError(Exception):
    """A problem the user can fix (bad input, missing data, wrong flag).

    The CLI prints its message as one line, with no traceback; the message names
    the problem and the fix.
    """
