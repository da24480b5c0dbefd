"""``python -m cat_dspy.cli``: the ``cat-dspy`` command."""

import sys

from cat_dspy.cli import main

sys.exit(main())
