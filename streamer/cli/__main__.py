"""``python -m streamer.cli``: the same as the ``tomo-streamer`` script."""

import sys

from streamer.cli import main

sys.exit(main())
