"""Entry point: `python -m training --help`."""

import sys

from training.cli import main

sys.exit(main())
