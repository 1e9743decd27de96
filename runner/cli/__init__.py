"""The ``runner`` command line."""
