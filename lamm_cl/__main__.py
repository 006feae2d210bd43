"""``python -m lamm_cl``: the ``lamm-cl`` command, for when the console script is not on PATH."""
import sys

from lamm_cl.cli import main

sys.exit(main())
