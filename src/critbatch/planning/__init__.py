"""The planner's parts, one job each; `critbatch.planner.plan` puts them together."""
