"""The client tests run against the AI domain's live server and fake OpenAI."""

from tests.ai.conftest import start_ai_server

__all__ = ["start_ai_server"]
