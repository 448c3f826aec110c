import sys

from slt_superposition.entry import main

sys.exit(main())
