"""kyara: which anime character is in this picture?"""

__version__ = "0.1.0"
