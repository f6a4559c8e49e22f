"""FrugalGPT cascades as a LlamaIndex LLM."""

from frugal_llamaindex.llms import FrugalLLM
from shared_scorer import __version__ as __version__

__all__ = ["FrugalLLM"]
