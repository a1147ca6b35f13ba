#!/usr/bin/env python
"""Stage 3: near-duplicate videos across the whole dataset, and indexes keeping one per group
(the command `vdp-dedup`).

`python index/dedup.py --help` lists every flag.
"""

import sys

from vdp.cli.dedup import main

if __name__ == "__main__":
    sys.exit(main())
