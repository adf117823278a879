"""``python -m kvs.cli``: the ``kvs`` command."""

import sys

from kvs.cli import main

if __name__ == "__main__":  # not in the demo's spawned worker processes
    sys.argv[0] = "kvs"  # oslo.config names the program (and its config files) after argv[0]
    sys.exit(main())
