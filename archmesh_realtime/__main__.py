"""`python -m archmesh_realtime` is `archmesh-rt`."""

import sys

from archmesh_realtime.cli import main

sys.exit(main())
