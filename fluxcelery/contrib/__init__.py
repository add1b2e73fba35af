"""Optional integrations. Nothing here is imported by ``import fluxcelery``.

``fluxcelery.contrib.flower`` needs the ``flower`` extra (``pip install fluxcelery[flower]``).
"""
