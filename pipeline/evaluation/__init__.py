"""Eval tasks (tasks/, one file each, registered in registry.py) and their scorers (scoring/)."""
