"""`python -m naq_ipy.cli COMMAND ...`: the `naq` command without its console script."""

import sys

from naq_ipy.cli.main import main

sys.exit(main())
