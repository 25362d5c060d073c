"""`python -m textfit` runs the command line."""

from __future__ import annotations

import sys

from textfit.cli import main

sys.exit(main())
