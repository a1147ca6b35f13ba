#!/usr/bin/env python
"""Stage 3: check samples and dump a few for a person to look at (the command `vdp-check-pair`).

`python index/check_pair.py --help` lists every flag.
"""

import sys

from vdp.cli.check_pair import main

if __name__ == "__main__":
    sys.exit(main())
