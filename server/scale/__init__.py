"""Scale-out on Ray Serve: an ingress (the REST app) and engine replicas with adapter-affine routing.

:func:`~splitasr.scale.app.build_app` assembles the application; ``splitasr serve --replicas N``
runs it (:mod:`splitasr.scale.launch`). Needs the ``scale`` extra (``ray[serve]``).
"""
