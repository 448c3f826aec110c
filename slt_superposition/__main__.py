import sys

from slt_superposition.cli import main

sys.exit(main())
