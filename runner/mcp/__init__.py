"""``runner mcp``: the sandbox as Model Context Protocol tools."""
