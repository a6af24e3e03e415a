"""``python -m robustsim.cli``: the same as the ``robustsim`` command."""
import sys

from . import main

sys.exit(main())
