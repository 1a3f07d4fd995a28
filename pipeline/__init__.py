"""tunechain: declarative chains of LLM stages driven by Hydra."""
import warnings

# Bumped when a change outside a stage module alters results (a stage module's own code is hashed into
# its fingerprint: pipeline/engine/fingerprint.py).
__version__ = "0.2.0"

# transformers 5.2x warns about its own deprecated name when peft/trl query it; users cannot act on it.
warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
