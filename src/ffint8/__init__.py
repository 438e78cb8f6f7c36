"""ff-int8: Forward-Forward training in INT8 arithmetic for edge devices."""

__version__ = "0.1.0"
