"""The package version, apart so that modules can read it without importing the package.

``setup.cfg`` reads it as ``attr: minisoup.__version__`` (re-exported by ``__init__``).
"""

__version__ = "0.1.0"
