"""The engine: config typing, plan, runner, store, fingerprints, tracking, report, sweep, cli."""
