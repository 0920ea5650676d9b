"""`python -m tests.lab ...`"""

import sys

from .cli import main

sys.exit(main())
