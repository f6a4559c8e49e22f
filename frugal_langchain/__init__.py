"""FrugalGPT cascades as a LangChain chat model."""

from frugal_langchain.chat_models import FrugalChatModel

__all__ = ["FrugalChatModel"]
