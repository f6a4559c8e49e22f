"""FrugalGPT cascades as a LangChain chat model."""

from frugal_langchain.chat_models import FrugalChatModel
from shared_scorer import __version__ as __version__

__all__ = ["FrugalChatModel"]
