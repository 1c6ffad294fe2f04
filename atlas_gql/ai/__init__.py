"""The AI domain: assistants, threads, messages, files, the provider adapters and the reply
orchestration. Importing it plugs its part of projects in (`projects.hooks`): whatever loads
an AI module has the project hooks registered."""

from atlas_gql.ai import project_content as _project_content  # noqa: F401 (registers hooks)
