"""The package version, apart so that modules can read it without importing the package.

``setup.cfg`` reads it here (``attr: minisoup._version.__version__``); ``__init__`` re-exports it.
"""

__version__ = "0.1.0"
