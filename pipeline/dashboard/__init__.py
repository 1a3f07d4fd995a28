"""tunechain's dashboard: `python -m pipeline.dashboard --port PORT` serves a local web app over the run
folders (outputs/, multirun/) and the store: runs, one run's chain and figures, the store's lineage,
comparisons, and starting a recipe (pipeline/dashboard/app.py)."""
