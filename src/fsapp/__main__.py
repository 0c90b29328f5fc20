"""`python -m fsapp ...`: the `fstore` command (e.g. where the script is not on PATH)."""
import sys

from fsapp.cli import main

sys.exit(main())
