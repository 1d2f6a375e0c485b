"""``lockgate demo``: the five seed systems end to end, against local stand-ins.

``run`` is the command (outcomes, refusals, audit, chain check), ``systems`` the stack with a
resource, stand-in and policy per system, ``stack`` the base stack (``lockgate init``, the
gateway in a thread, the App Service orders API of ``upstream``), ``report`` the printing,
``run_secretless`` the ``--secretless`` form (``secretless``: the stack with workload
identity and federation only; ``secret_scan``: the scan for stored secrets that closes it),
``airflow_runner`` the Airflow process, ``standins`` the services' stand-ins, written from
their public API docs for demos and tests (the tests reuse them). Nothing below the top layer
imports this package.
"""
