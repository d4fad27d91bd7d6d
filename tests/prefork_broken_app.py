"""An APP module that fails at import (``python -m minisoup prefork_broken_app:setup``)."""

raise RuntimeError("this module is broken on purpose")


def setup(server):  # never reached
    pass
