"""python -m crescendo.cli"""

import sys

from . import main

sys.exit(main())
