"""Config composition (Hydra), validation (pydantic) and identity (hash)."""
