"""``python -m cat_dspy``: the ``cat-dspy`` command line (:func:`cat_dspy.cli.main`)."""

import sys

from cat_dspy.cli import main

if __name__ == "__main__":
    sys.exit(main())
