import sys

from fillsim.cli import main

sys.exit(main())
