"""c100: train, evaluate and use ResNet-class classifiers on CIFAR-100."""

__version__ = "0.2.0"  # also the package's version (pyproject.toml reads it); see CHANGELOG.md


class UserError(Exception):
    """A problem the user can fix (bad input, missing data, wrong flag).

    The CLI prints its message as one line, with no traceback; the message names
    the problem and the fix.
    """


def __getattr__(name: str):
    """`c100.load` and `c100.Model` (see c100/inference.py), imported on first use so that `import c100`
    and `c100 --help` stay fast (no torch import)."""
    if name in ("load", "Model"):
        from c100 import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'c100' has no attribute '{name}'")
