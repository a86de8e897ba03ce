"""`python -m model_server ...` is the same as the `model-server` command."""

import sys

from model_server.cli import main

sys.exit(main())
