"""`python -m kvplan.profilers.distributed` and `torchrun ... -m kvplan.profilers.distributed`: main on every rank."""

import sys

from .launch import main

sys.exit(main())
