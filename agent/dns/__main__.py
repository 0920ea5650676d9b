"""`python -m agent.dns restore|status|serve` (what `kuma-dp dns ...` runs)."""

import sys

from .cli import main

sys.exit(main())
