"""Command line (typer): thin layers over the Python functions."""
