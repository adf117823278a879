"""``python -m kvs``: the ``kvs`` command (the same as ``python -m kvs.cli``)."""

import sys

from kvs.cli import main

if __name__ == "__main__":  # not in the demo's spawned worker processes
    sys.argv[0] = "kvs"  # oslo.config names the program (and its config files) after argv[0]
    sys.exit(main())
