"""The pure core's tests: spec, CRD, planner, posterior, science, simulation, vocabulary, layout,
provenance, metrics and the CLI, with no cluster, trainer process or GPU.

They need no fixture of their own: what they share with other subsystems is in tests/ as
modules (sweeps, crd_tools, raw_http), and pytest's own fixtures do the rest.
"""
