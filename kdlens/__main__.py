import sys

from kdlens.cli import main

sys.exit(main())
