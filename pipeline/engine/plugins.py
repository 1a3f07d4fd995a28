"""Your own stage kinds and eval tasks, each one file outside tunechain, imported before the plan:

    python main.py plugins=[my_stages.py] +stage/schema@stages.count=count_files stages.count.suffix=.json
    python main.py plugins=[mypackage.tasks] stages.eval_tuned.tasks=[math,answer_words]

A `.py` path follows the config path rule (pipeline/paths.py); anything else is a module name on
sys.path. Importing the file runs its `@stage` / `@task` decorators; stages in their own process
import it again (pipeline/engine/launch.py: user_modules)."""
from __future__ import annotations

import importlib
import sys

from pipeline import paths
from pipeline.errors import ConfigError


def load(specs: list[str]) -> None:
    for spec in specs:
        name = spec
        if spec.endswith(".py"):
            path = paths.resolve(spec)
            if not path.is_file():
                raise ConfigError(f"plugins: {spec}: no such file (looked in {paths.tried(spec)})")
            if str(path.parent) not in sys.path:
                sys.path.append(str(path.parent))
            name = path.stem
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"plugins: {spec}: cannot import it ({e}); give a .py file or a module on "
                              f"sys.path") from None
