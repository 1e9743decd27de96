"""``runner mcp``: the sandbox as Model Context Protocol tools for any agent."""

from runner.mcp.server import SERVER_NAME, build_server
from runner.mcp.service import Refused, SandboxService, ServerPolicy

__all__ = ["SERVER_NAME", "Refused", "SandboxService", "ServerPolicy", "build_server"]
