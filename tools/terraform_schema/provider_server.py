"""A schema-only Terraform provider: enough of plugin protocol 5 for `terraform validate`.

Terraform attaches to an already running provider through TF_REATTACH_PROVIDERS (the
mechanism provider developers use to debug a provider). This process serves, for each
provider address it is given, the schema that `cdktf_schema` recovered from the provider's
prebuilt CDKTF package, and answers the validation calls with no diagnostics of its own:
Terraform itself then checks every argument name, block, value type, required argument and
block item count against that schema, which is what `terraform validate` checks with the
real provider minus the provider's own value checks (ValidateFunc: name patterns and lengths;
terraform/variables.tf and tests/gcp/test_terraform.py check those that bind us).

Nothing that plans or applies is implemented: Terraform gets UNIMPLEMENTED for those.

Usage (tools/check-terraform does this):
    python provider_server.py registry.terraform.io/hashicorp/google=google.json ...
It prints the TF_REATTACH_PROVIDERS value as its first line of output, then serves until
its standard input is closed or it is terminated.

Protocol: tfplugin5.proto of Terraform v1.11.4 (docs/plugin-protocol/tfplugin5.8.proto,
MPL-2.0), compiled with grpcio-tools 1.76.0 into tfplugin5_pb2*.py.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import tfplugin5_pb2 as pb
import tfplugin5_pb2_grpc as pb_grpc

_NESTING = {
    "single": pb.Schema.NestedBlock.SINGLE,
    "list": pb.Schema.NestedBlock.LIST,
    "set": pb.Schema.NestedBlock.SET,
    "map": pb.Schema.NestedBlock.MAP,
}


def schema_block(block: dict[str, Any]) -> pb.Schema.Block:
    """A protocol Block from a block of `terraform providers schema -json`'s shape."""
    return pb.Schema.Block(
        attributes=[
            pb.Schema.Attribute(
                name=name,
                type=json.dumps(attribute["type"]).encode(),
                required=attribute["required"],
                optional=attribute["optional"],
                computed=attribute["computed"],
            )
            for name, attribute in sorted(block["attributes"].items())
        ],
        block_types=[
            pb.Schema.NestedBlock(
                type_name=name,
                block=schema_block(nested["block"]),
                nesting=_NESTING[nested["nesting_mode"]],
                min_items=nested["min_items"],
                max_items=nested["max_items"],
            )
            for name, nested in sorted(block["block_types"].items())
        ],
    )


class SchemaOnlyProvider(pb_grpc.ProviderServicer):
    """Serves one provider's schema; validates nothing beyond what Terraform does with it."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self._response = pb.GetProviderSchema.Response(
            provider=pb.Schema(block=schema_block(schema["provider"])),
            resource_schemas={
                name: pb.Schema(block=schema_block(block))
                for name, block in schema["resource_schemas"].items()
            },
            data_source_schemas={
                name: pb.Schema(block=schema_block(block))
                for name, block in schema["data_source_schemas"].items()
            },
        )
        self._metadata = pb.GetMetadata.Response(
            resources=[
                pb.GetMetadata.ResourceMetadata(type_name=name)
                for name in schema["resource_schemas"]
            ],
            data_sources=[
                pb.GetMetadata.DataSourceMetadata(type_name=name)
                for name in schema["data_source_schemas"]
            ],
        )

    def GetMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802 (protocol name)
        return self._metadata

    def GetSchema(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self._response

    def PrepareProviderConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.PrepareProviderConfig.Response(prepared_config=request.config)

    def ValidateResourceTypeConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.ValidateResourceTypeConfig.Response()

    def ValidateDataSourceConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.ValidateDataSourceConfig.Response()

    def ValidateEphemeralResourceConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.ValidateEphemeralResourceConfig.Response()

    def GetFunctions(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.GetFunctions.Response()

    def Stop(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.Stop.Response()


def serve(schemas: dict[str, Path], socket_dir: Path) -> tuple[list[grpc.Server], dict[str, Any]]:
    """Start one server per provider address; returns them and the TF_REATTACH_PROVIDERS value."""
    servers, reattach = [], {}
    for index, (address, path) in enumerate(sorted(schemas.items())):
        socket = socket_dir / f"provider-{index}.sock"
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4),
            options=[("grpc.max_send_message_length", 256 * 1024 * 1024)],
        )
        pb_grpc.add_ProviderServicer_to_server(
            SchemaOnlyProvider(json.loads(path.read_text())), server
        )
        server.add_insecure_port(f"unix:{socket}")
        server.start()
        servers.append(server)
        reattach[address] = {
            "Protocol": "grpc",
            "ProtocolVersion": 5,
            "Pid": os.getpid(),
            # Test: Terraform must not try to stop a process it did not start.
            "Test": True,
            "Addr": {"Network": "unix", "String": str(socket)},
        }
    return servers, reattach


def main(arguments: list[str]) -> int:
    schemas = {}
    for argument in arguments:
        address, separator, path = argument.partition("=")
        if not separator or not Path(path).is_file():
            print(f"expected ADDRESS=SCHEMA_JSON, got {argument!r}", file=sys.stderr)
            return 2
        schemas[address] = Path(path)
    with tempfile.TemporaryDirectory(prefix="tf-schema-provider-") as socket_dir:
        servers, reattach = serve(schemas, Path(socket_dir))
        print(json.dumps(reattach), flush=True)
        sys.stdin.read()  # until the caller closes our standard input
        for server in servers:
            server.stop(grace=None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
