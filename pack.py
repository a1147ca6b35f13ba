#!/usr/bin/env python
"""Stage 1: pack dataset annotations + videos into webdataset tar shards (the command `vdp-pack`).

Run from the repo, it also registers your own datasets and samplers from loaders.py and
samplers.py beside it. `python pack.py --help` lists every flag.
"""

import os
import sys

from vdp.cli.pack import main

HERE = os.path.dirname(os.path.abspath(__file__))

if __name__ == "__main__":
    sys.exit(main(["--plugin", os.path.join(HERE, "loaders.py"), "--plugin", os.path.join(HERE, "samplers.py"),
                   *sys.argv[1:]]))
