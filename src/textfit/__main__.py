"""`python -m textfit` runs the command line."""

from __future__ import annotations

from textfit.cli import run

run()
