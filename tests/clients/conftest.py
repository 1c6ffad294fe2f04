"""The client tests run against the AI domain's live server and fake OpenAI."""

from tests.ai.conftest import fake_openai, start_ai_server

__all__ = ["fake_openai", "start_ai_server"]
