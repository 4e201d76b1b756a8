"""Command-line interface of anomem (``anomem --help``)."""
