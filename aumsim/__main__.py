import sys

from aumsim.cli import main

sys.exit(main())
