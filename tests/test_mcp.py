"""The app as MCP tools (``--mcp``), as an agent sees them: one tool per endpoint, named after
it; schemas that accept exactly what the handlers accept; and three calls through the MCP
protocol itself (Streamable HTTP), the same three through gradio_client."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from conftest import AppServer, local_get

mcp = pytest.importorskip("mcp", reason="the MCP tests need Gradio's MCP extra: pip install 'gradio[mcp]'")


@pytest.fixture(scope="module")
def mcp_server():
    server = AppServer(args=("--offline", "--mcp"))
    yield server
    server.stop()


def test_every_tool_is_named_after_its_endpoint_and_takes_what_its_handler_takes(mcp_server):
    tools = {t["name"]: t for t in json.loads(local_get(mcp_server.port, "/gradio_api/mcp/schema")[1])}
    api = json.loads(local_get(mcp_server.port, "/gradio_api/info")[1])["named_endpoints"]
    assert set(tools) == {name.lstrip("/") for name in api}
    assert {"predict", "attribute", "compare", "anatomy", "stats", "unit", "hide"} <= set(tools)
    for name, tool in tools.items():
        assert tool["meta"]["endpoint_name"] == name
    props = {name: tool["inputSchema"]["properties"] for name, tool in tools.items()}
    assert props["compare"]["batch_sizes"]["items"] == {"type": "integer", "enum": [1, 8, 32, 64]}
    assert props["train_digits"]["batch_size"]["type"] == "integer"
    assert props["train_digits"]["epochs"]["type"] == "integer" and props["attribute"]["steps"]["type"] == "integer"
    # Names that depend on the model are free text (the handler checks them), not the first model's list.
    for tool, param in (("attribute", "target"), ("attribute", "layer"), ("anatomy", "block"), ("branches", "block"),
                        ("ablate", "branch")):
        assert props[tool][param]["type"] == "string" and "enum" not in props[tool][param], (tool, param)


async def _call_tools(url: str, calls: list[tuple[str, dict]]) -> list:
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with streamable_http_client(url + "gradio_api/mcp/") as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            return [await session.call_tool(name, args) for name, args in calls]


def test_three_calls_through_mcp_and_gradio_client_alike(mcp_server, cat):
    from gradio_client import Client, handle_file

    image = "data:image/jpeg;base64," + base64.b64encode(cat.read_bytes()).decode()
    calls = [
        ("compare", {"models": ["squeezenet1_0"], "device": "cpu", "batch_sizes": [1], "runs": 5}),
        ("attribute", {"image": image, "model": "squeezenet1_0", "method": "saliency", "target": "tabby"}),
        ("anatomy", {"model": "resnet50", "block": ""}),
        ("anatomy", {"model": "resnet50", "block": "inception4c"}),
    ]
    compared, attributed, anatomy, wrong = asyncio.run(_call_tools(mcp_server.url, calls))
    assert not compared.isError and "SqueezeNet 1.0" in compared.content[0].text
    assert not attributed.isError and "'label': 'tabby'" in attributed.content[0].text
    assert not anatomy.isError and "layer4" in anatomy.content[0].text
    assert wrong.isError and "ResNet-50 has no block 'inception4c'" in wrong.content[0].text

    client = Client(mcp_server.url, verbose=False)
    results = client.predict(models=["squeezenet1_0"], device="cpu", batch_sizes=[1], runs=5, api_name="/compare")[-1]
    assert results["settings"]["batches"] == [1] and [r["batch"] for r in results["results"]] == [1]
    raw = client.predict(image=handle_file(str(cat)), model="squeezenet1_0", method="saliency", target="tabby",
                         api_name="/attribute")[4]
    assert raw["label"] == "tabby" and raw["target"] == 281
    stages = client.predict(model="resnet50", block="", api_name="/anatomy")[0]
    assert any(row[0].startswith("layer4.") for row in stages["data"])
    stats = client.predict(models=["googlenet", "resnet50"], api_name="/stats")
    assert [s["key"] for s in stats] == ["googlenet", "resnet50"] and stats[1]["params"] == 25_557_032
