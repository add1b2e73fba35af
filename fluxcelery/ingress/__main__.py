"""``python -m fluxcelery.ingress``: the ``fluxcelery consume`` command."""

from ..cli.consume import main

raise SystemExit(main())
