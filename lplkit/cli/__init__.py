"""Command-line interface. The only package that imports typer/rich; library imports are lazy."""
