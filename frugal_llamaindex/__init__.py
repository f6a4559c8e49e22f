"""FrugalGPT cascades as a LlamaIndex LLM."""

from frugal_llamaindex.llms import FrugalLLM

__all__ = ["FrugalLLM"]
