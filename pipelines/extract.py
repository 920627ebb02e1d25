"""Stage-1 entry point: ``python pipelines/extract.py --dataset dfew --root /data/DFEW --out cache/dfew.h5``.

A thin wrapper over ``tgdfer extract`` so ``make extract`` and ``torchrun --nproc-per-node N pipelines/extract.py``
run the same code as the console command.
"""

import sys

from tgdfer.cli import main

if __name__ == "__main__":
    sys.exit(main(["extract", *sys.argv[1:]]))
