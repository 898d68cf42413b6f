"""gRPC: the typed electra.v1 service, the call and stream plumbing, the server."""
