"""ATLAS: a GraphQL backend for multi-user AI-assistant workspaces."""

__version__ = "0.1.0"
