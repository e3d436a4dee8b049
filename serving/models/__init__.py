"""Model backends: text in -> generations with token ids and token log-probs out. No Ray here."""

from serving.models.base import Generation, GenerationRequest, InvalidInput
from serving.models.hf import HFBackend

__all__ = ["Generation", "GenerationRequest", "HFBackend", "InvalidInput"]
