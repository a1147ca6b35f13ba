#!/usr/bin/env python
"""Stage 3: validate every sample and write the indexes (the command `vdp-index`).

`python index/main.py --help` lists every flag.
"""

import sys

from vdp.cli.index import main

if __name__ == "__main__":
    sys.exit(main())
