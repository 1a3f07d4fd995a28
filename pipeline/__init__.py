"""tunechain: declarative chains of LLM stages driven by Hydra."""
import warnings

__version__ = "0.1.0"

# transformers 5.2x warns about its own deprecated name when peft/trl query it; users cannot act on it.
warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
