import sys

from lungkit.cli import main

sys.exit(main())
