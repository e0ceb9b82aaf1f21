import sys

from sievetrain.cli import main

sys.exit(main())
