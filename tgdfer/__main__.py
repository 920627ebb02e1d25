"""``python -m tgdfer`` (also what torchrun runs: ``torchrun --nproc-per-node N -m tgdfer extract ...``)."""

import sys

from tgdfer.cli import main

sys.exit(main())
