"""The MCP server itself: ``SandboxService``'s tools served with the official SDK.

The SDK is imported by ``build_server`` only, so the rest of the package runs (and
is tested) without it: ``pip install 'experiment-runner[mcp]'``.
"""

# No ``from __future__ import annotations``: the SDK reads each tool's signature, whose
# descriptions name the server's limits (local values when the tools are defined).
import base64
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from runner.core.exceptions import ExperimentExecutionError
from runner.core.models import PreprocessingConfig
from runner.mcp.reports import Outcome, ResultList, RunReport
from runner.mcp.service import Refused, SandboxService, spec_of

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

SERVER_NAME = "experiment-runner"


def build_server(service: SandboxService) -> "MCPServer[Any]":
    """An ``MCPServer`` (the official SDK) serving ``service``'s three tools."""
    try:
        from mcp.server.mcpserver import Context, MCPServer
        from mcp.server.mcpserver.exceptions import ToolError
        from mcp.types import CallToolResult, ImageContent, TextContent, ToolAnnotations
    except ImportError as e:
        raise ExperimentExecutionError(
            "`runner mcp` needs the MCP SDK, which is not installed.",
            hint="install the extra: pip install 'experiment-runner[mcp]'.",
        ) from e

    policy = service.policy
    server: MCPServer[Any] = MCPServer(
        SERVER_NAME,
        instructions=(
            "Runs Python in fresh, hardened, single-use containers with scikit-learn, "
            "pandas, numpy and matplotlib, and no network. A script reports metrics by "
            'printing a last line like {"success": true, "metrics": {"accuracy": 0.9}}. '
            "Files written to the working directory come back as artifacts (images as "
            f"images). Limits: {policy.timeout:g} s, {policy.memory_limit} memory, "
            f"{policy.cpu_limit:g} CPU."
        ),
        log_level="INFO",
    )

    def outcome_result(outcome: Outcome) -> CallToolResult:
        content: list[Any] = [TextContent(text=outcome.text)]
        content += [
            ImageContent(data=base64.b64encode(i.data).decode(), mime_type=i.mime_type)
            for i in outcome.images
        ]
        return CallToolResult(
            content=content,
            structured_content=outcome.report.model_dump(mode="json"),
            is_error=not outcome.report.success,
        )

    async def guarded(call: Callable[[], Awaitable[Outcome]]) -> CallToolResult:
        """A refusal, or a machine that cannot run anything, is a tool error with a message."""
        try:
            return outcome_result(await call())
        except Refused as e:
            raise ToolError(f"Refused: {e}") from None
        except ExperimentExecutionError as e:
            raise ToolError(f"Could not run: {e}") from None

    annotations = ToolAnnotations(read_only_hint=False, open_world_hint=False)

    @server.tool(annotations=annotations)
    async def run_python(
        code: Annotated[str, Field(description="Python source, run as main.py")],
        files: Annotated[
            dict[str, str] | None,
            Field(description="small text files beside the script: relative name -> content"),
        ] = None,
        args: Annotated[list[str] | None, Field(description="the script's sys.argv[1:]")] = None,
        timeout: Annotated[
            float | None,
            Field(description=f"seconds, at most {policy.timeout:g} (the default)"),
        ] = None,
        memory_limit: Annotated[
            str | None,
            Field(description=f"e.g. '512m', at most {policy.memory_limit} (the default)"),
        ] = None,
        name: Annotated[str, Field(description="a name for the run in the results")] = "run_python",
        ctx: Context | None = None,
    ) -> Annotated[CallToolResult, RunReport]:
        """Run Python code in a fresh sandbox (no network, read-only files but its working
        directory and /tmp) and return how it ended: success, metrics, exit code, timeout,
        out-of-memory, the output's tail, and the files it wrote."""
        return await guarded(
            lambda: service.run_python(
                code, files, args, timeout, memory_limit, name, client=_client(ctx)
            )
        )

    @server.tool(annotations=annotations)
    async def run_experiment(
        experiment_name: str,
        model_type: Annotated[
            str, Field(description="a scikit-learn estimator, e.g. RandomForestClassifier")
        ],
        dataset: Annotated[
            str, Field(description=f"one of: {', '.join(sorted(policy.data)) or '(none)'}")
        ],
        target_column: str,
        task_type: Literal["classification", "regression"] = "classification",
        model_params: dict[str, Any] | None = None,
        preprocessing: PreprocessingConfig | None = None,
        hypothesis: str = "",
        reasoning: str = "",
        timeout: float | None = None,
        memory_limit: str | None = None,
        holdout: Annotated[
            bool,
            Field(
                description="score on rows the script never sees the labels of (the "
                "metrics are then the server's, metrics_source 'holdout'); false: the "
                "script's own split and its own numbers"
            ),
        ] = True,
        ctx: Context | None = None,
    ) -> Annotated[CallToolResult, RunReport]:
        """Train and evaluate a scikit-learn model on one of the server's data sets, in a
        fresh sandbox; returns the metrics (by default the server's scores on held-out
        rows) and how the run ended."""

        async def call() -> Outcome:
            spec = spec_of(
                experiment_name=experiment_name,
                model_type=model_type,
                model_params=model_params or {},
                preprocessing=preprocessing or PreprocessingConfig(),
                hypothesis=hypothesis,
                reasoning=reasoning,
            )
            return await service.run_experiment(
                spec, dataset, target_column, task_type, timeout, memory_limit,
                client=_client(ctx), holdout=holdout,
            )  # fmt: skip

        return await guarded(call)

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    def list_results(
        name: Annotated[
            str | None, Field(description="only experiments whose name contains this")
        ] = None,
        limit: Annotated[int, Field(ge=1, le=200)] = 20,
    ) -> ResultList:
        """The results this server recorded, best first (by accuracy, r2, f1 or roc_auc)."""
        return service.list_results(name, limit)

    return server


def _client(ctx: Any) -> object:
    """Who called, for the server's gate: over streamable HTTP, the MCP session
    (``Mcp-Session-Id``) when the client has one; else every call counts as one client's
    (on stdio the server has only one). The SDK keeps no other identity of a client
    across requests."""
    headers = ctx.headers if ctx is not None else None
    return headers.get("mcp-session-id") if headers else None
