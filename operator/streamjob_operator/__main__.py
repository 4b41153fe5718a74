"""``python -m streamjob_operator``: run the operator (settings from STREAMJOB_OPERATOR_*)."""

from __future__ import annotations

import logging

import kopf


def main() -> None:
    from streamjob_operator import main as handlers

    settings = handlers.SETTINGS
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kopf.configure(verbose=settings.log_level == "DEBUG")
    if settings.metrics_port:
        from streamjob_operator.metrics import METRICS

        METRICS.serve(settings.metrics_port)
    kopf.run(standalone=True, clusterwide=settings.clusterwide,
             namespaces=list(settings.namespaces) if not settings.clusterwide else None,
             liveness_endpoint="http://0.0.0.0:8080/healthz")


if __name__ == "__main__":
    main()
