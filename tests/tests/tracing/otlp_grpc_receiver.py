"""An OTLP gRPC collector for tests/tests/tracing.rs, made of PyPI's opentelemetry-proto and
grpcio (the venv `cargo xtask setup` installs in target/tools/otlp-receiver).

Listens on 127.0.0.1 (an ephemeral port), prints `LISTENING <port>`, then one JSON line per
span it receives through TraceService/Export, until killed.
"""

import json
import sys
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def attribute_text(value):
    kind = value.WhichOneof("value")
    return str(getattr(value, kind)) if kind else ""


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        for resource_spans in request.resource_spans:
            service = ""
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    service = attribute_text(attribute.value)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    print(
                        json.dumps(
                            {
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_span_id": span.parent_span_id.hex(),
                                "kind": span.kind,
                                "name": span.name,
                                "service": service,
                                "start": span.start_time_unix_nano,
                                "end": span.end_time_unix_nano,
                                "attributes": {
                                    a.key: attribute_text(a.value) for a in span.attributes
                                },
                            }
                        ),
                        flush=True,
                    )
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"LISTENING {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    sys.exit(main())
