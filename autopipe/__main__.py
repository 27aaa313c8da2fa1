"""``python -m autopipe`` runs the CLI."""

import sys

from autopipe.cli.main import main

sys.exit(main())
