#!/usr/bin/env python3
"""A tiny grpcurl: calls any shopfast service knowing nothing but its address.

Everything it knows about the API it learns from the server's reflection
service, using Google's grpcio (code nobody in this project wrote).

  grpc_reflect.py ADDR list
  grpc_reflect.py ADDR describe SERVICE
  grpc_reflect.py ADDR call SERVICE METHOD '{"json": "request"}'

`call` prints the response as proto3 JSON and exits 0, or prints
`ERROR <STATUS_CODE> <message>` and exits 1.
"""
import json
import sys

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    addr, command = argv[1], argv[2]
    channel = grpc.insecure_channel(addr)
    grpc.channel_ready_future(channel).result(timeout=10)
    reflection_db = ProtoReflectionDescriptorDatabase(channel)
    pool = DescriptorPool(reflection_db)

    if command == "list":
        for name in sorted(reflection_db.get_services()):
            print(name)
        return 0
    if command == "describe":
        service = pool.FindServiceByName(argv[3])
        for method in service.methods:
            print(f"{method.name}({method.input_type.full_name}) -> {method.output_type.full_name}")
        return 0
    if command == "call":
        service_name, method_name = argv[3], argv[4]
        body = json.loads(argv[5]) if len(argv) > 5 else {}
        method = pool.FindServiceByName(service_name).methods_by_name[method_name]
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        request = json_format.ParseDict(body, request_class())
        stub = channel.unary_unary(
            f"/{service_name}/{method_name}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        try:
            response = stub(request, timeout=10)
        except grpc.RpcError as err:
            print(f"ERROR {err.code().name} {err.details()}")
            return 1
        print(json_format.MessageToJson(response))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
