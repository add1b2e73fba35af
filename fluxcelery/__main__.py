"""``python -m fluxcelery``: the same as the ``fluxcelery`` command."""

from .cli import main

raise SystemExit(main())
