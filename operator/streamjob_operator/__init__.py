"""The StreamJob operator: turns a StreamJob into a coordinator pod and worker pods.

Layering: pure modules (``names``, ``builders``, ``desired``, ``phases``, ``decide``) import no
I/O; ``kube`` and ``coordinator`` do the I/O; ``reconcile`` ties them together; ``main`` holds
the one-line kopf handlers. The runtime (``streamjob``) is used only for its manifest model.
"""

__version__ = "0.1.0"
