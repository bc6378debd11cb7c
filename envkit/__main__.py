import sys

from envkit.cli.app import main

sys.exit(main())
