import sys

from ffint8.cli import main

sys.exit(main())
