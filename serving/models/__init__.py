"""Model backends: text in -> generations with token ids and token log-probs out. No Ray here."""

from serving.models.base import Generation, GenerationRequest
from serving.models.hf import HFBackend

__all__ = ["Generation", "GenerationRequest", "HFBackend"]
