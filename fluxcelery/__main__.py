"""``python -m fluxcelery``: the same as the ``fluxcelery`` command."""

from .cli.main import main

raise SystemExit(main())
