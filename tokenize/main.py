#!/usr/bin/env python
"""Stage 2: frame shards -> LLaMA-2 token sequences packed for Megatron (the command `vdp-tokenize`).

`python tokenize/main.py --help` lists every flag.
"""

import sys

from vdp.cli.tokenize import main

if __name__ == "__main__":
    sys.exit(main())
