"""`python -m loralab.cli ...` (used by `accelerate launch -m loralab.cli train ...`)."""

import sys

from loralab.cli import main

sys.exit(main())
