"""The `gpo` command line: a thin typer layer over the `stages` library."""
