"""python scripts/embedded_data --out embedded/data: write the jsonl sets."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # scripts/, so `embedded_data` imports as a package

from embedded_data.sets import main  # noqa: E402

main()
