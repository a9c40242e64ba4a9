"""`python -m netfit ...` runs the command line (also how `torchrun -m netfit` starts it)."""
import sys

from .cli import main

sys.exit(main())
