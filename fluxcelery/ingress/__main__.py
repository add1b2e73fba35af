"""``python -m fluxcelery.ingress``."""

from .command import main

raise SystemExit(main())
