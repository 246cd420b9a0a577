"""rllc.service: the HTTP API of ``rllc serve`` on Ray Serve, and its client.

Modules, one job each: ``config`` (token, roots, store, caps from the environment or a
file), ``security`` (bearer check, roots, ids), ``submission`` (a request body to a
checked spec, in the documented order), ``registry`` (the list of sweeps and tunes, kept
in the service's store), ``runner`` (one Ray actor per run, with the cooperative cancel
hook), ``core`` (what each route does), ``app`` (the FastAPI ingress and the Serve
deployment) and ``client`` (a standard-library Python client). docs/service.md describes
the API.
"""
