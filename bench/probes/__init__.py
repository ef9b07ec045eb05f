"""Small measurements behind statements in docs/benchmarks.md, each one command:

python -m bench.probes.stream_messages   # what one message on a grpc.aio stream costs
python -m bench.probes.submit_in_process # Submit's own CPU, without gRPC
"""
